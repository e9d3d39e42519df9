"""A job's lifecycle: its statuses and the transitions between them.

queued ──► running ──► completed | failed | cancelled
  │           │
  │           └──► queued   (re-queued: server restart or shutdown mid-run)
  └──► cancelled | failed
"""

from __future__ import annotations

from enum import StrEnum

from execbox.errors import CallerError


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.QUEUED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class IllegalTransition(CallerError):
    status = 409

    def __init__(self, job_id: str, current: Status, target: Status) -> None:
        super().__init__(f"job {job_id} is {current.value}; it cannot become {target.value}")
        self.current = current
        self.target = target


def sources_of(target: Status) -> frozenset[Status]:
    """The statuses a job may reach ``target`` from."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
