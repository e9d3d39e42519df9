"""The in-process event bus of the embedded mode."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

from execbox.bus.base import CancelHandler, EventBus, Subscription
from execbox.store import JobEvent


class LocalEventBus(EventBus):
    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._cancel_handlers: list[CancelHandler] = []

    async def publish(self, job_id: str, events: Sequence[JobEvent]) -> None:
        for subscription in self._subscribers.get(job_id, ()):
            for event in events:
                subscription.deliver(event)

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        subscription = Subscription()
        self._subscribers[job_id].add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers[job_id]
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[job_id]

    async def request_cancel(self, job_id: str) -> None:
        for handler in self._cancel_handlers:
            handler(job_id)

    def on_cancel_request(self, handler: CancelHandler) -> None:
        self._cancel_handlers.append(handler)
