"""The event bus's interface: a job's events, published after they are persisted, to
whoever follows the job (SSE streams, synchronous callers), plus cancel requests to
the worker running a job.

Two backends: in-process (local.py, the embedded mode) and Redis (redis.py, scale-out).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from execbox.store import EventKind, JobEvent

CancelHandler = Callable[[str], None]


class Lagged(Exception):
    """The subscriber fell behind and events were dropped: read them from the store."""


# Put in a subscription's queue by lag() only to wake its reader; never returned.
_WAKE_UP = JobEvent(EventKind.STATUS)


class Subscription:
    """Events of one job published after the subscription began."""

    def __init__(self, maxsize: int = 1024) -> None:
        self._queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize)
        self._lagged = False

    def deliver(self, event: JobEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Never let a slow reader hold the publisher or grow memory without bound.
            self._lagged = True

    def lag(self) -> None:
        """Events may have been missed (a bus lost its connection): the reader is told
        so, at once even while it waits, and reads them from the store."""
        self._lagged = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_WAKE_UP)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> JobEvent:
        if not self._lagged:
            event = await self._queue.get()
            if not self._lagged:
                return event
        self._lagged = False
        while not self._queue.empty():
            self._queue.get_nowait()
        raise Lagged


class EventBus(ABC):
    @abstractmethod
    async def publish(self, job_id: str, events: Sequence[JobEvent]) -> None: ...

    @abstractmethod
    def subscribe(self, job_id: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    @abstractmethod
    async def request_cancel(self, job_id: str) -> None:
        """Asks the worker running the job, wherever it is, to stop it."""

    @abstractmethod
    def on_cancel_request(self, handler: CancelHandler) -> None:
        """Registers a worker's handler of cancel requests."""

    async def close(self) -> None:
        return None
