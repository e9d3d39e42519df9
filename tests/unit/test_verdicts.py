"""The engine says how a command ended; the runner says what that means."""

from __future__ import annotations

import pytest

from execbox.engine import Outcome, SandboxResult
from execbox.models import Verdict
from execbox.runner.results import to_stage, verdict_of


def _result(outcome: Outcome, exit_code: int | None = None, **fields: object) -> SandboxResult:
    values: dict[str, object] = {
        "signal": None,
        "stdout": b"",
        "stderr": b"",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "wall_time_s": 0.5,
        "cpu_time_s": 0.25,
        "memory_bytes": 4 << 20,
        **fields,
    }
    return SandboxResult(outcome=outcome, exit_code=exit_code, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "exit_code", "verdict"),
    [
        (Outcome.EXITED, 0, Verdict.OK),
        (Outcome.EXITED, 3, Verdict.RUNTIME_ERROR),
        (Outcome.SIGNALLED, None, Verdict.RUNTIME_ERROR),
        (Outcome.KILLED, None, Verdict.RUNTIME_ERROR),
        (Outcome.KILLED_FOR_TIME, None, Verdict.TIME_LIMIT),
        (Outcome.KILLED_FOR_MEMORY, None, Verdict.MEMORY_LIMIT),
        (Outcome.KILLED_FOR_OUTPUT, None, Verdict.OUTPUT_LIMIT),
        (Outcome.UNREPORTED, None, Verdict.INTERNAL_ERROR),
    ],
)
def test_each_outcome_maps_to_its_verdict(
    outcome: Outcome, exit_code: int | None, verdict: Verdict
) -> None:
    assert verdict_of(_result(outcome, exit_code)) == verdict


def test_output_that_is_not_utf8_comes_back_exact_beside_its_text() -> None:
    stage = to_stage(_result(Outcome.EXITED, 0, stdout=b"ok\xff", stderr=b"fine"))
    assert stage.verdict == Verdict.OK
    assert stage.stdout == "ok\ufffd" and stage.stdout_base64 == "b2v/"
    assert stage.stderr == "fine" and stage.stderr_base64 is None
    assert (stage.wall_time_ms, stage.cpu_time_ms, stage.memory_kb) == (500, 250, 4096)
