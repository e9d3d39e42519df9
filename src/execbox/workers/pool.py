"""The worker pool: takes job ids from the queue and runs each job (run_job).

The same code serves the embedded mode (a pool of tasks in the API process) and
dedicated worker processes.
"""

from __future__ import annotations

import asyncio

import structlog

from execbox.jobs.execution import JobRunner
from execbox.jobs.service import LeaseLost
from execbox.logging import internal_error
from execbox.queue import JobQueue

log = structlog.get_logger(__name__)


class _Slot:
    """One of the pool's ``concurrency`` places for a running sandbox, held from taking a
    job until its sandbox is done (not while its outcome is recorded)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class WorkerPool:
    """Runs at most ``concurrency`` jobs' sandboxes at a time. Twice as many tasks take
    jobs, so that one job's outcome is recorded (a commit, events, a webhook) while the
    next job's program already runs: the cores stay busy with programs."""

    def __init__(self, *, job_runner: JobRunner, queue: JobQueue, concurrency: int) -> None:
        self.job_runner = job_runner
        self.queue = queue
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._loops: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[None]] = set()
        self._stopping = False

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._loop(), name=f"execbox-worker-{i}")
            for i in range(2 * self.concurrency)
        ]

    @property
    def alive(self) -> bool:
        return bool(self._loops) and not any(task.done() for task in self._loops)

    async def stop(self, grace_s: float) -> None:
        """Takes no new job; lets running ones finish for ``grace_s``, then stops them
        and puts them back in the queue (they run again on the next start)."""
        self._stopping = True
        for task in self._idle:
            task.cancel()
        busy = [task for task in self._loops if task not in self._idle]
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace_s)
            if late:
                self.job_runner.stop_all("shutdown")
        await asyncio.gather(*self._loops, return_exceptions=True)

    async def _loop(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        while not self._stopping:
            self._idle.add(current)
            try:
                await self._slots.acquire()
                slot = _Slot(self._slots)
                try:
                    job_id = await self.queue.get()
                except BaseException:
                    slot.release()
                    raise
            finally:
                self._idle.discard(current)
            with structlog.contextvars.bound_contextvars(job_id=job_id):
                try:
                    await self.job_runner.run_job(job_id, sandbox_done=slot.release)
                except LeaseLost:
                    log.warning("job taken over by another worker; this run's outcome is dropped")
                except Exception:
                    # The job could not even be recorded as failed (store down?):
                    # log and keep the worker alive; recovery finds the job later.
                    internal_error("worker could not record a job")
                finally:
                    slot.release()
                    await self.queue.done(job_id)
