"""In-process queue of the embedded mode. It holds only ids: after a restart it is
rebuilt from the jobs the store has as queued (see JobService.recover)."""

from __future__ import annotations

import asyncio

from execbox.queue.base import JobQueue, QueueFull
from execbox.store import Job


class LocalQueue(JobQueue):
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        # Unbounded underneath: the bound is enforced at admission (check_capacity), so a
        # job already persisted is never refused, e.g. when re-queued after a restart.
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._closed = False

    async def check_capacity(self) -> None:
        depth = self._queue.qsize()
        if depth >= self.maxsize:
            raise QueueFull(depth, retry_after_s=1)

    async def put(self, job: Job) -> None:
        self._queue.put_nowait(job.id)

    async def get(self) -> str:
        return await self._queue.get()

    async def depth(self) -> int:
        return self._queue.qsize()

    async def ping(self) -> None:
        if self._closed:
            raise RuntimeError("the queue is closed")

    async def close(self) -> None:
        self._closed = True
