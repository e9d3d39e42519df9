"""The event bus of scale-out mode: Redis pub/sub, so a job's events reach whichever
API process follows it, and a cancel request reaches whichever worker runs it.

Pub/sub delivers only to who listens at that moment, which is all a bus owes: the
events are persisted before they are published, and a follower that may have
missed some (the connection dropped) is told so (Subscription.lag) and reads them
from the store. One connection per process carries every subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from execbox.bus.base import CancelHandler, EventBus, Subscription
from execbox.store import EventKind, JobEvent

log = structlog.get_logger(__name__)

SUBSCRIBE_TIMEOUT_S = 5
RECONNECT_AFTER_S = 1
_UNREACHABLE = (RedisError, OSError)


def _encode(events: Sequence[JobEvent]) -> str:
    return json.dumps(
        [
            {"kind": e.kind.value, "data": e.data, "at": e.at.isoformat(), "seq": e.seq}
            for e in events
        ]
    )


def _decode(payload: bytes) -> list[JobEvent]:
    return [
        JobEvent(EventKind(e["kind"]), e["data"], datetime.fromisoformat(e["at"]), e["seq"])
        for e in json.loads(payload)
    ]


class RedisEventBus(EventBus):
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._cancel_channel = f"{prefix}:cancel"
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        # SUBSCRIBE commands sent and not yet confirmed, per channel, in order.
        self._confirmations: defaultdict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._cancel_handlers: list[CancelHandler] = []
        self._pubsub: PubSub = redis.pubsub()
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Starts listening (and keeps at it through Redis outages); waits a little for
        the connection, but starts without one: requests get 503s until Redis is back."""
        self._reader = asyncio.create_task(self._read_forever(), name="execbox-event-bus")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await self._connected.wait()

    def _channel(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    async def publish(self, job_id: str, events: Sequence[JobEvent]) -> None:
        try:
            await self.redis.publish(self._channel(job_id), _encode(events))
        except _UNREACHABLE as exc:
            # The events are in the store already; followers catch up from there
            # when their own connection comes back (they are told they lagged).
            log.warning("could not publish events", job_id=job_id, error=str(exc))

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        channel = self._channel(job_id)
        subscription = Subscription()
        first = not self._subscribers[channel]
        self._subscribers[channel].add(subscription)
        try:
            if first:
                await self._listen(channel)
            elif self._confirmations[channel]:
                await asyncio.shield(self._confirmations[channel][-1])
            yield subscription
        finally:
            subscribers = self._subscribers[channel]
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[channel]
                with contextlib.suppress(*_UNREACHABLE):
                    await self._pubsub.unsubscribe(channel)

    async def _listen(self, channel: str) -> None:
        """Subscribes and waits until Redis confirms: only then is no event missed."""
        try:
            # Redis may be back while the reader is still between two attempts.
            async with asyncio.timeout(2 * RECONNECT_AFTER_S):
                await self._connected.wait()
        except TimeoutError as exc:
            raise RedisConnectionError("the event bus is not connected to Redis") from exc
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel].append(confirmed)
        await self._pubsub.subscribe(channel)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await asyncio.shield(confirmed)
        except TimeoutError as exc:
            raise RedisTimeoutError("Redis did not confirm a subscription in time") from exc

    async def request_cancel(self, job_id: str) -> None:
        await self.redis.publish(self._cancel_channel, job_id)

    def on_cancel_request(self, handler: CancelHandler) -> None:
        self._cancel_handlers.append(handler)

    async def close(self) -> None:
        # Not by cancelling the reader: redis-py's get_message may swallow a
        # cancellation. Closing its connection ends the read at once.
        self._closing = True
        with contextlib.suppress(*_UNREACHABLE):
            await self._pubsub.aclose()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    # -- the reader -------------------------------------------------------------------

    async def _read_forever(self) -> None:
        while not self._closing:
            try:
                await self._pubsub.subscribe(self._cancel_channel, *self._subscribers)
                self._connected.set()
                while not self._closing:
                    message = await self._pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except _UNREACHABLE as exc:
                if self._connected.is_set():
                    log.warning("event bus lost Redis; reconnecting", error=str(exc))
                self._lost_connection()
                if self._closing:
                    return
                with contextlib.suppress(*_UNREACHABLE):
                    await self._pubsub.aclose()
                await asyncio.sleep(RECONNECT_AFTER_S)

    def _lost_connection(self) -> None:
        self._connected.clear()
        for pending in self._confirmations.values():
            for future in pending:
                if not future.done():
                    future.set_exception(RedisConnectionError("lost the connection to Redis"))
        self._confirmations.clear()
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.lag()

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if message["type"] == "subscribe":
            pending = self._confirmations.get(channel)
            if not pending:
                # Subscribed again after a reconnection: what was published before
                # this point is read from the store.
                for subscription in self._subscribers.get(channel, ()):
                    subscription.lag()
                return
            future = pending.pop(0)
            if not future.done():
                future.set_result(None)
            if not pending:
                del self._confirmations[channel]
        elif message["type"] != "message":
            return
        elif channel == self._cancel_channel:
            job_id = message["data"].decode()
            for handler in self._cancel_handlers:
                handler(job_id)
        else:
            events = _decode(message["data"])
            for subscription in self._subscribers.get(channel, ()):
                for event in events:
                    subscription.deliver(event)
