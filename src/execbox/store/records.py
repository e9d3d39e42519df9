"""The persisted records: a job and the events of its log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from execbox.jobs.states import Status
from execbox.models import ExecutionRequest, Verdict


def utcnow() -> datetime:
    return datetime.now(UTC)


class EventKind(StrEnum):
    STATUS = "status"  # a lifecycle transition: {status, reason?}
    STAGE = "stage"  # compiling | running | test N: {stage}
    STDOUT = "stdout"  # {stage, data} or {stage, data_base64}
    STDERR = "stderr"
    ERROR = "error"  # an internal failure: {message, debug_id}
    RESULT = "result"  # the final result; its body is the job itself, not stored twice


# What an SSE stream carries, and what the activity log shows.
STREAM_KINDS = frozenset({EventKind.STATUS, EventKind.STDOUT, EventKind.STDERR, EventKind.RESULT})
ACTIVITY_KINDS = frozenset({EventKind.STATUS, EventKind.STAGE, EventKind.ERROR})


@dataclass(frozen=True)
class JobEvent:
    kind: EventKind
    data: dict[str, Any] | None = None
    at: datetime = field(default_factory=utcnow)
    seq: int = 0  # assigned by the store, in order, per job


@dataclass
class Job:
    id: str
    status: Status
    language: str
    request: ExecutionRequest
    created_at: datetime
    language_version: str | None = None
    verdict: Verdict | None = None
    # The stages of the result: {"compile": ..., "run": ..., "tests": ...}, as JSON.
    outcome: dict[str, Any] | None = None
    error_message: str | None = None
    error_debug_id: str | None = None
    attempts: int = 0
    event_seq: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    # Its stdin is a live connection (WS /v1/executions/interactive): only the process
    # holding it can run the job, and never again once it is gone.
    interactive: bool = False

    @property
    def callback_url(self) -> str | None:
        return self.request.callback_url
