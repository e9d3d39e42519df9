"""The scale-out queue: SAQ's Redis queue behind execbox's JobQueue.

Redis holds only job ids and SAQ's bookkeeping; the jobs live in PostgreSQL. SAQ
gives the hand-over of a job to exactly one worker (BLMOVE queued → active), and a
sweeper that puts a job whose worker stopped heart-beating back in the queue. Its
defaults (a 10 s timeout, no heartbeat, a sweep a minute) suit none of this, so
every job is enqueued with its own timeout and heartbeat (see ``put``), and workers
sweep every ``heartbeat_s`` (see execbox.workers.upkeep).

SAQ delivers a job at least once; execbox's attempt fence (JobService.claim) makes
a second delivery harmless.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq.job import TERMINAL_STATUSES
from saq.job import Job as SaqJob
from saq.job import Status as SaqStatus
from saq.queue.redis import RedisQueue as SaqQueue
from saq.utils import now as saq_now

from execbox.config import Settings
from execbox.queue.base import JobQueue, QueueFull
from execbox.store import Job

log = structlog.get_logger(__name__)

FUNCTION = "execbox.run"  # SAQ's function name; execbox workers run nothing else
DEQUEUE_WAIT_S = 1  # one BLMOVE; bounds how long a cancelled get() may hold a job
RETRY_AFTER_OUTAGE_S = 1
# Time a job may run beyond its own limits (sandbox start, writing results) before
# SAQ's sweeper takes it for stuck even though its worker still heart-beats.
TIMEOUT_MARGIN_S = 60
# SAQ would give up on a job after this many deliveries; execbox gives up earlier,
# counting real starts (JobService.hand_back), so SAQ never decides alone.
SAQ_RETRIES = 1000
FINISHED_TTL_S = 600  # SAQ's record of a finished job; the database keeps the job
ABORT_WAIT_S = 0.5  # how long the sweeper waits for a stuck job's worker to let go

RedeliveryHandler = Callable[[str], Awaitable[None]]


def connect(settings: Settings) -> Redis:
    """A client that fails fast when Redis is away (a 503, not a hung request)."""
    assert settings.redis_url is not None
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=DEQUEUE_WAIT_S + 5,  # above the BLMOVE wait
        health_check_interval=10,
        # Without retry_on_error, a pooled connection from before a Redis restart fails
        # the next command; with it, the command is sent again on a fresh connection.
        retry=Retry(ExponentialBackoff(cap=1, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def job_timeout_s(job: Job, settings: Settings) -> int:
    """How long the job may take at most: compile + every run at their wall limits
    (the server's maxima where the request left them to defaults), plus a margin."""
    request = job.request
    compile_s = request.compile_limits.wall_time_s or settings.max_wall_time_s
    run_s = request.limits.wall_time_s or settings.max_wall_time_s
    runs = max(1, len(request.tests or ()))
    return math.ceil(compile_s + run_s * runs + TIMEOUT_MARGIN_S)


class RedisQueue(JobQueue):
    def __init__(self, redis: Redis, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.saq = SaqQueue(
            redis,
            name=settings.redis_prefix,
            swept_error_message="its worker stopped heart-beating",
        )
        self.redis = redis
        # Jobs this process took and is not through with: heart-beaten until done().
        self._held: dict[str, SaqJob] = {}
        # Set by the wiring: called with a job delivered again, before it is returned.
        self.on_redelivery: RedeliveryHandler | None = None

    # -- the API side -----------------------------------------------------------

    async def check_capacity(self) -> None:
        depth = await self.depth()
        if depth >= self.settings.queue_size:
            raise QueueFull(depth, retry_after_s=1)

    async def put(self, job: Job) -> None:
        held = self._held.pop(job.id, None)
        if held is not None:
            # Handed back by this worker (shutdown): SAQ queues it again at once.
            await held.retry("handed back")
            return
        # Keyed by the job id: SAQ refuses a second copy while one is queued or running.
        await self.saq.enqueue(
            SaqJob(
                function=FUNCTION,
                key=job.id,
                timeout=job_timeout_s(job, self.settings),
                heartbeat=math.ceil(self.settings.lease_s),
                retries=SAQ_RETRIES,
                ttl=FINISHED_TTL_S,
            )
        )

    async def depth(self) -> int:
        return await self.saq.count("queued")

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise RuntimeError(f"Redis is unreachable: {exc}") from exc

    async def close(self) -> None:
        await self.saq.disconnect()

    # -- the worker side ------------------------------------------------------------

    async def get(self) -> str:
        """The next job; waits through Redis outages (a worker loop must not die of one)."""
        while True:
            taking = asyncio.ensure_future(self._take())
            try:
                job = await asyncio.shield(taking)
            except asyncio.CancelledError:
                # Redis may already have moved a job to this worker: give it back now
                # rather than leave it to the sweeper.
                job = await taking
                if job is not None:
                    await self._give_back(job)
                raise
            if job is None:
                continue
            try:
                if job.attempts > 1 and self.on_redelivery is not None:
                    await self.on_redelivery(job.key)
            except asyncio.CancelledError:
                await self._give_back(job)
                raise
            self._held[job.key] = job
            return job.key

    async def _take(self) -> SaqJob | None:
        try:
            job = await self.saq.dequeue(timeout=DEQUEUE_WAIT_S)
            if job is None:
                return None
            # What SAQ's own Worker records on taking a job: the sweeper judges by it.
            job.started = saq_now()
            job.attempts += 1
            job.worker_id = self.worker_id
            await job.update(status=SaqStatus.ACTIVE)
        except (RedisError, OSError) as exc:
            # A job moved but not marked active is swept back into the queue.
            log.warning("cannot take jobs from Redis; retrying", error=str(exc))
            await asyncio.sleep(RETRY_AFTER_OUTAGE_S)
            return None
        return job

    async def _give_back(self, job: SaqJob) -> None:
        try:
            await job.retry("the worker stopped before starting it")
        except RedisError:
            log.warning("could not give a job back; the sweeper will", job_id=job.key)

    async def done(self, job_id: str) -> None:
        job = self._held.pop(job_id, None)
        if job is None:
            return
        try:
            await job.finish(SaqStatus.COMPLETE)
        except RedisError as exc:
            # The job itself is finished in the database; only SAQ's copy lingers,
            # and the sweeper clears it.
            log.warning("could not mark a job done in Redis", job_id=job_id, error=str(exc))

    async def heartbeat(self) -> None:
        """Tells SAQ the held jobs are alive (SAQ's ``touched``)."""
        for job in list(self._held.values()):
            await job.update()

    async def sweep(self) -> list[str]:
        """Jobs of workers that stopped heart-beating go back in the queue; at most one
        process sweeps per ``heartbeat_s`` (SAQ takes a lock)."""
        return await self.saq.sweep(
            lock=max(1, math.ceil(self.settings.heartbeat_s)), abort=ABORT_WAIT_S
        )

    async def unknown(self, job_ids: Iterable[str]) -> list[str]:
        """Of these jobs, those SAQ has neither queued nor running (e.g. lost with a
        Redis restart, or finished in Redis while the database missed it)."""
        ids = list(job_ids)
        if not ids:
            return []
        states = await self.saq.jobs(ids)
        return [
            job_id
            for job_id, state in zip(ids, states, strict=True)
            if state is None or state.status in TERMINAL_STATUSES
        ]
