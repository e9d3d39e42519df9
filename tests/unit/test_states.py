"""The job state machine: who may become what."""

from __future__ import annotations

import pytest

from execbox.jobs.states import TERMINAL, TRANSITIONS, IllegalTransition, Status, sources_of


def test_terminal_statuses_lead_nowhere() -> None:
    assert {status for status, targets in TRANSITIONS.items() if not targets} == TERMINAL
    assert {Status.COMPLETED, Status.FAILED, Status.CANCELLED} == TERMINAL


@pytest.mark.parametrize(
    ("target", "sources"),
    [
        (Status.RUNNING, {Status.QUEUED}),
        (Status.QUEUED, {Status.RUNNING}),  # re-queued after a restart or a shutdown
        (Status.COMPLETED, {Status.RUNNING}),
        (Status.CANCELLED, {Status.QUEUED, Status.RUNNING}),
        (Status.FAILED, {Status.QUEUED, Status.RUNNING}),
    ],
)
def test_sources_of_each_status(target: Status, sources: set[Status]) -> None:
    assert sources_of(target) == sources


def test_an_illegal_transition_is_a_409_that_names_both_states() -> None:
    error = IllegalTransition("j1", Status.COMPLETED, Status.CANCELLED)
    assert error.status == 409
    assert str(error) == "job j1 is completed; it cannot become cancelled"
