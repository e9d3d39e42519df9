"""The interactive runs of this process (WS /v1/executions/interactive), counted
against their limit: they wait on people, so they take no worker slot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from execbox.errors import CallerError


class TooManySessions(CallerError):
    status = 429


class InteractiveSessions:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: set[str] = set()

    @contextlib.contextmanager
    def session(self, job_id: str) -> Iterator[None]:
        """Holds a place for the job's run; raises TooManySessions when none is left."""
        if len(self._running) >= self.limit:
            raise TooManySessions(f"{self.limit} interactive runs are going on; try later")
        self._running.add(job_id)
        try:
            yield
        finally:
            self._running.discard(job_id)
