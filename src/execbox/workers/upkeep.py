"""The upkeep of scale-out mode: what keeps jobs moving when workers are many and any may die.

Beside each worker pool, every ``heartbeat_s``:

- heartbeat: SAQ's ``touched`` of the jobs the pool holds, their leases in the
  database (jobs.heartbeat_at), and the worker's entry in the registry;
- sweep: SAQ's sweeper puts a job whose worker was silent for ``lease_s`` back in
  the queue; the worker that gets it hands the dead run back first (``redelivered``),
  which fences that run out (JobService.claim);
- reconcile (one process at a time): what SAQ cannot see, because Redis lost it
  (a restart without persistence) or never got it (an API process died between
  the database and Redis). Running jobs whose lease expired and that SAQ does not
  hold are handed back; queued jobs SAQ does not know are queued again.

A SIGKILLed worker's jobs therefore run again within ``lease_s`` + 2 *
``heartbeat_s`` + about a second (15 s with the defaults), or fail after
``max_attempts`` starts, with the reason in their error. No job stays running.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from execbox.config import Settings
from execbox.jobs.service import JobNotFound, JobService
from execbox.jobs.states import Status
from execbox.queue.redis import RedisQueue
from execbox.store import Job
from execbox.workers.registry import LocalWorker, RedisRegistry

log = structlog.get_logger(__name__)

# A dependency being away is logged as a warning and tried again next tick; anything
# else is a bug and gets a traceback, but never stops the upkeep.
_OUTAGES = (RedisError, SQLAlchemyError, OSError)
LOST = "its worker stopped answering"


class Recovery:
    """Gives the jobs of lost runs back to the queue (or fails them after
    ``max_attempts`` starts)."""

    def __init__(self, settings: Settings, *, queue: RedisQueue, jobs: JobService) -> None:
        self.settings = settings
        self.queue = queue
        self.jobs = jobs

    async def redelivered(self, job_id: str) -> None:
        """SAQ delivers a job again: if the database still has it running, its run was
        lost (the sweeper judged so); hand it back before this worker claims it."""
        try:
            job = await self.jobs.get(job_id)
            if job.status == Status.RUNNING:
                await self._hand_back(job)
        except (JobNotFound, *_OUTAGES) as exc:
            log.warning("could not check a redelivered job", job_id=job_id, error=str(exc))

    async def _hand_back(self, job: Job) -> Job | None:
        return await self.jobs.hand_back(
            job,
            reason=f"worker {job.worker_id} stopped answering; running it again",
            lost=LOST,
            max_attempts=self.settings.max_attempts,
        )

    async def reconcile(self) -> None:
        """The database against Redis: running jobs whose lease expired and that SAQ
        does not hold are handed back; queued jobs SAQ does not know are queued."""
        expired = {job.id: job for job in await self.jobs.expired_leases(self.settings.lease_s)}
        for job_id in await self.queue.unknown(expired):
            handed = await self._hand_back(expired[job_id])
            if handed is not None and handed.status == Status.QUEUED:
                await self.queue.put(handed)
        for job_id in await self.queue.unknown(await self.jobs.ids(Status.QUEUED)):
            with contextlib.suppress(JobNotFound):
                job = await self.jobs.get(job_id)
                if job.status != Status.QUEUED:
                    continue
                log.info("job queued again in Redis", job_id=job_id)
                await self.queue.put(job)


class Upkeep:
    def __init__(
        self,
        settings: Settings,
        *,
        queue: RedisQueue,
        jobs: JobService,
        registry: RedisRegistry,
        worker: LocalWorker,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.jobs = jobs
        self.registry = registry
        self.worker = worker
        self._task: asyncio.Task[None] | None = None
        # Stopped by this event, not by cancelling: redis-py may swallow a cancellation.
        self._stopping = asyncio.Event()
        self.recovery = Recovery(settings, queue=queue, jobs=jobs)
        queue.on_redelivery = self.recovery.redelivered

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="execbox-upkeep")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(*_OUTAGES):
            await self.registry.withdraw(self.worker)

    async def _forever(self) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("heartbeat", self.queue.heartbeat),
            ("lease renewal", self._renew_leases),
            ("registry", lambda: self.registry.announce(self.worker)),
            ("sweep", self.queue.sweep),
            ("reconcile", self._reconcile_once),
        ]
        while not self._stopping.is_set():
            for name, step in steps:
                try:
                    await step()
                except _OUTAGES as exc:
                    log.warning("upkeep step failed; retrying", step=name, error=str(exc))
                except Exception:
                    log.exception("upkeep step failed", step=name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_s):
                    await self._stopping.wait()

    async def _renew_leases(self) -> None:
        job_runner = self.worker.job_runner
        running = job_runner.running_jobs
        kept = set(await self.jobs.renew_leases(self.worker.id, running))
        for job_id in running:
            # Finished meanwhile, or taken over: stopping a finished run does nothing.
            if job_id not in kept:
                job_runner.stop(job_id, "lost")

    async def _reconcile_once(self) -> None:
        lock = f"{self.settings.redis_prefix}:reconcile"
        period = max(1, math.ceil(self.settings.heartbeat_s))
        if await self.queue.redis.set(lock, self.worker.id, nx=True, ex=period):
            await self.recovery.reconcile()
