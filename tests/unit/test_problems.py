"""Every error a caller can cause maps to its problem the same way, found along the
exception's class hierarchy; our own failures get a debug id."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from execbox.api.auth import Unauthenticated
from execbox.api.problems import ProblemError, problem_of
from execbox.jobs.service import JobNotFound
from execbox.jobs.states import IllegalTransition, Status
from execbox.queue import QueueFull
from execbox.runner import InvalidRequest, UnknownLanguage
from execbox.webhooks import CallbackUrlError


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (JobNotFound("abc"), 404),
        (IllegalTransition("abc", Status.FAILED, Status.CANCELLED), 409),
        (InvalidRequest("no"), 422),
        (UnknownLanguage("no"), 422),  # a subclass: found along the MRO
        (CallbackUrlError("no"), 422),
        (Unauthenticated("no key"), 401),
        (ProblemError(418, "teapot"), 418),
    ],
)
def test_caller_errors_carry_their_status(error: Exception, status: int) -> None:
    got, body, _ = problem_of(error, "/v1/x")
    assert got == status == body["status"]
    assert body["detail"] == str(error) and body["title"] and "debug_id" not in body


def test_headers_travel_with_the_problem() -> None:
    _, body, headers = problem_of(QueueFull(depth=7, retry_after_s=3), "/v1/executions")
    assert headers == {"Retry-After": "3"}
    assert body["detail"] == "the queue is full (7 jobs waiting); try again later"
    _, _, headers = problem_of(Unauthenticated("x"), "/v1/x")
    assert headers == {"WWW-Authenticate": "Bearer"}


def test_a_dependency_away_is_a_503_and_a_bug_a_500_with_a_debug_id() -> None:
    status, body, headers = problem_of(RedisConnectionError("gone"), "/v1/x")
    assert status == 503 and headers == {"Retry-After": "5"}
    assert "Redis" in body["detail"]
    status, body, _ = problem_of(KeyError("oops"), "/v1/x")
    assert status == 500 and body["debug_id"] and "oops" not in body["detail"]


def test_job_not_found_says_which_id() -> None:
    assert str(JobNotFound("abc")) == "no execution with id abc"
