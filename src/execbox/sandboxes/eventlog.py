"""A replayable, bounded event log in memory: a command's output or a build's steps.

Followers read from any position (an SSE Last-Event-ID) and then wait for more, so a
client can reconnect to a server's logs minutes later. The oldest events are dropped
past a memory budget, and a follower that asks for dropped events is told so.

The budget counts what an event costs the server, not only its payload: a program
writing one byte at a time would otherwise hold hundreds of bytes of bookkeeping per
byte of output. Output chunks of one stream are merged into the newest event for as
long as no follower has taken it, so a log that nobody reads holds few large events
and a follower that keeps up still gets every chunk at once; an event, once handed
out, never changes, so a replay after Last-Event-ID is exact. The logs of a sandbox
also share a budget (a `LogBudget`) for their sum.
"""

from __future__ import annotations

import asyncio
import base64
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

# What one event costs the server beyond its payload (the event, its bytes object,
# its slot in the log), measured at ~150 bytes and rounded up for the JSON a
# follower renders from it.
EVENT_OVERHEAD = 256
MAX_MERGED_CHUNK = 64 << 10  # output merged into one event, at most


def chunk_data(data: bytes) -> dict[str, Any]:
    """Output as JSON: text, plus the exact bytes when they are not UTF-8."""
    try:
        return {"data": data.decode()}
    except UnicodeDecodeError:
        return {
            "data": data.decode(errors="replace"),
            "data_base64": base64.b64encode(data).decode(),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One event. Output keeps its raw ``chunk`` (rendered on demand, so that merging
    chunks works on bytes) under the fields of ``fields``; other events are ``fields``."""

    seq: int
    kind: str
    fields: dict[str, Any]
    chunk: bytes | None = None
    size: int = 0  # its cost in the budget

    @property
    def data(self) -> dict[str, Any]:
        if self.chunk is None:
            return self.fields
        return {**self.fields, **chunk_data(self.chunk)}


@dataclass(eq=False)
class LogBudget:
    """The memory all event logs of one sandbox may hold together. Past it, finished
    logs give up their oldest events first (the oldest log first), then the log that
    grows gives up its own."""

    max_bytes: int
    used: int = 0
    _logs: dict[EventLog, None] = field(default_factory=dict)  # in the order they came

    @property
    def over(self) -> bool:
        return self.used > self.max_bytes

    def _reclaim(self, growing: EventLog) -> None:
        for log in list(self._logs):
            if not self.over:
                return
            if log.closed and log is not growing:
                log._drop_oldest_while(lambda: self.over, keep=0)


class EventLog:
    def __init__(self, max_bytes: int, budget: LogBudget | None = None) -> None:
        self.max_bytes = max_bytes
        self._budget = budget
        if budget is not None:
            budget._logs[self] = None
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._seq = 0
        self._handed_out = 0  # the newest sequence number a follower has taken
        # Set and replaced on every change: followers wait on the one they saw.
        self._waker = asyncio.Event()
        self.closed = False

    def append(self, kind: str, data: dict[str, Any], size: int = 0) -> None:
        """An event whose payload costs about ``size`` bytes."""
        if self.closed:
            return
        self._seq += 1
        self._push(Event(self._seq, kind, data, None, EVENT_OVERHEAD + size))

    def write(self, kind: str, chunk: bytes, fields: dict[str, Any] | None = None) -> None:
        """Output: merged into the newest event while it is of the same kind and
        fields and no follower has taken it yet."""
        if self.closed or not chunk:
            return
        fields = fields or {}
        last = self._events[-1] if self._events else None
        if (
            last is not None
            and last.seq > self._handed_out
            and last.chunk is not None
            and last.kind == kind
            and last.fields == fields
            and len(last.chunk) + len(chunk) <= MAX_MERGED_CHUNK
        ):
            self._events.pop()
            self._charge(-last.size)
            merged = last.chunk + chunk
            self._push(Event(last.seq, kind, fields, merged, EVENT_OVERHEAD + len(merged)))
            return
        self._seq += 1
        self._push(Event(self._seq, kind, fields, chunk, EVENT_OVERHEAD + len(chunk)))

    def _push(self, event: Event) -> None:
        self._events.append(event)
        self._charge(event.size)
        self._trim()
        self._wake()

    def _charge(self, size: int) -> None:
        self._bytes += size
        if self._budget is not None:
            self._budget.used += size

    def shrink(self, max_bytes: int) -> None:
        """A smaller budget from now on (a finished command keeps only its tail)."""
        self.max_bytes = min(self.max_bytes, max_bytes)
        self._trim()

    def release(self) -> None:
        """Drops every event and leaves the shared budget (a log no longer kept)."""
        self.close()
        self._drop_oldest_while(lambda: True, keep=0)
        if self._budget is not None:
            self._budget._logs.pop(self, None)

    def _trim(self) -> None:
        # Keep at least the newest event, whatever its size.
        self._drop_oldest_while(lambda: self._bytes > self.max_bytes, keep=1)
        budget = self._budget
        if budget is not None and budget.over:
            budget._reclaim(self)
            self._drop_oldest_while(lambda: budget.over, keep=1)

    def _drop_oldest_while(self, condition: Callable[[], bool], keep: int) -> None:
        while len(self._events) > keep and condition():
            self._charge(-self._events.popleft().size)

    def close(self) -> None:
        """No more events: followers end after the last one."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._waker.set()
        self._waker = asyncio.Event()

    def _next(self, after: int) -> Event | None:
        """The first event kept after sequence number ``after``."""
        if not self._events or self._events[-1].seq <= after:
            return None
        return self._events[max(0, after + 1 - self._events[0].seq)]

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Events after sequence number ``after``, then new ones until closed. A
        ``dropped`` event stands for events that fell out of the budget."""
        while True:
            waker = self._waker
            event = self._next(after)
            if event is not None:
                # Taken from the log one at a time: a slow follower holds no copy of it.
                self._handed_out = max(self._handed_out, event.seq)
                if event.seq > after + 1:
                    yield Event(event.seq - 1, "dropped", {"events": event.seq - 1 - after})
                yield event
                after = event.seq
                continue
            if self.closed:
                return
            await waker.wait()
