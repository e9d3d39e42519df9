"""A replayable, bounded event log in memory: a command's output or a build's steps.

Followers read from any position (an SSE Last-Event-ID) and then wait for more, so a
client can reconnect to a server's logs minutes later. The oldest output is dropped
past a byte budget, and a follower that asks for dropped events is told so.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    data: dict[str, Any]
    size: int


class EventLog:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._seq = 0
        # Set and replaced on every change: followers wait on the one they saw.
        self._waker = asyncio.Event()
        self.closed = False

    def append(self, kind: str, data: dict[str, Any], size: int = 0) -> None:
        if self.closed:
            return
        self._seq += 1
        self._events.append(Event(self._seq, kind, data, size))
        self._bytes += size
        self._trim()
        self._wake()

    def shrink(self, max_bytes: int) -> None:
        """A smaller budget from now on (a finished command keeps only its tail)."""
        self.max_bytes = min(self.max_bytes, max_bytes)
        self._trim()

    def _trim(self) -> None:
        # Keep at least the newest event, whatever its size.
        while self._bytes > self.max_bytes and len(self._events) > 1:
            self._bytes -= self._events.popleft().size

    def close(self) -> None:
        """No more events: followers end after the last one."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._waker.set()
        self._waker = asyncio.Event()

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Events after sequence number ``after``, then new ones until closed. A
        ``dropped`` event stands for output that fell out of the budget."""
        while True:
            waker = self._waker
            pending = [e for e in self._events if e.seq > after]
            if pending:
                if pending[0].seq > after + 1:
                    yield Event(
                        pending[0].seq - 1, "dropped", {"events": pending[0].seq - 1 - after}, 0
                    )
                for event in pending:
                    yield event
                    after = event.seq
                continue
            if self.closed:
                return
            await waker.wait()
