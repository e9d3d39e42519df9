"""The composition root: the only place the long-lived parts of a running execbox
(store, bus, queue, runner and engine, job service and job runner, workers, webhooks,
metrics) are built from the settings, and taken down in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from execbox.bus import EventBus, LocalEventBus
from execbox.bus.redis import RedisEventBus
from execbox.config import Settings
from execbox.jobs.execution import JobRunner
from execbox.jobs.interactive import InteractiveSessions
from execbox.jobs.recovery import recover_after_restart
from execbox.jobs.service import JobService
from execbox.languages import LanguageInfo
from execbox.logging import internal_error
from execbox.metrics import Metrics
from execbox.models import LanguageRef
from execbox.queue import JobQueue, LocalQueue
from execbox.queue.redis import RedisQueue, connect
from execbox.runner import Runner
from execbox.store import Database, JobStore
from execbox.webhooks import Webhooks
from execbox.workers.pool import WorkerPool
from execbox.workers.registry import (
    LocalRegistry,
    LocalWorker,
    RedisRegistry,
    WorkerRegistry,
    new_worker_id,
)
from execbox.workers.upkeep import Upkeep

log = structlog.get_logger(__name__)

PRUNE_EVERY_S = 3600
# Interactive runs wait on people, so they take no worker slot; this caps them.
SESSIONS_PER_WORKER = 4


@dataclass
class Services:
    settings: Settings
    db: Database
    runner: Runner
    bus: EventBus
    queue: JobQueue
    jobs: JobService
    job_runner: JobRunner
    interactive: InteractiveSessions
    metrics: Metrics
    webhooks: Webhooks
    workers: WorkerPool | None
    registry: WorkerRegistry
    _stack: contextlib.AsyncExitStack
    _languages: dict[str, LanguageInfo] = field(default_factory=dict)

    @classmethod
    async def start(cls, settings: Settings, *, workers: bool | None = None) -> Services:
        """Embedded mode: in-process queue and bus, a worker pool in this process.
        Scale-out mode (EXECBOX_REDIS_URL): SAQ's Redis queue and the Redis bus; a worker
        pool with ``workers`` (``execbox worker``), by default only if
        EXECBOX_EMBEDDED_WORKERS says so."""
        with_workers = settings.runs_embedded_workers if workers is None else workers
        worker_id = new_worker_id()
        async with contextlib.AsyncExitStack() as stack:
            db = Database(settings.database, settings.database_schema)
            stack.push_async_callback(db.close)
            mode = await (_scale_out if settings.scale_out else _embedded)(
                settings, db, stack, worker_id
            )
            await db.migrate()
            runner = await Runner.create(settings)
            stack.push_async_callback(runner.close)
            metrics = Metrics()
            webhooks = Webhooks(settings, metrics)
            stack.push_async_callback(webhooks.close, settings.shutdown_grace_s)
            jobs = JobService(JobStore(db), mode.bus, mode.queue)
            if mode.recover_on_start:
                requeued = await recover_after_restart(jobs, settings.max_attempts)
                if requeued:
                    log.info("jobs queued again after a restart", count=requeued)
            # Every process runs jobs: queued ones in its worker pool, if it has one, and
            # the interactive ones whose connection it holds.
            job_runner = JobRunner(
                jobs=jobs, runner=runner, metrics=metrics, webhooks=webhooks, worker_id=worker_id
            )
            pool = None
            if with_workers:
                pool = WorkerPool(
                    job_runner=job_runner, queue=mode.queue, concurrency=settings.workers
                )
                mode.keep_up(LocalWorker(worker_id, pool, job_runner, runner), jobs, stack)
                pool.start()
                stack.push_async_callback(pool.stop, settings.shutdown_grace_s)
            if settings.retention_days > 0:
                pruner = asyncio.create_task(
                    _prune_forever(jobs, timedelta(days=settings.retention_days))
                )
                stack.callback(pruner.cancel)
            services = cls(
                settings=settings,
                db=db,
                runner=runner,
                bus=mode.bus,
                queue=mode.queue,
                jobs=jobs,
                job_runner=job_runner,
                interactive=InteractiveSessions(settings.workers * SESSIONS_PER_WORKER),
                metrics=metrics,
                webhooks=webhooks,
                workers=pool,
                registry=mode.registry,
                _stack=stack.pop_all(),
            )
        services._languages = {
            key.lower(): info for info in runner.languages() for key in (info.name, *info.aliases)
        }
        # What is built by now lives as long as the process: out of the cyclic
        # collector's sight, full collections scan only what requests create (they
        # paused the event loop, and every request on it, for 30-100 ms otherwise).
        gc.collect()
        gc.freeze()
        return services

    async def stop(self) -> None:
        await self._stack.aclose()

    def language_ref(self, name: str) -> LanguageRef:
        """The canonical name and version of a language the runner accepted."""
        info = self._languages.get(name.lower())
        return LanguageRef(name=info.name, version=info.version) if info else LanguageRef(name=name)


async def _prune_forever(jobs: JobService, retention: timedelta) -> None:
    while True:
        try:
            if deleted := await jobs.prune(retention):
                log.info("old jobs deleted", count=deleted)
        except Exception:
            internal_error("pruning old jobs failed")
        await asyncio.sleep(PRUNE_EVERY_S)


@dataclass
class _Mode:
    """What differs between the embedded and the scale-out mode."""

    bus: EventBus
    queue: JobQueue
    registry: WorkerRegistry
    # Jobs left running or queued by a dead process are this process's to take back
    # (embedded); in scale-out they may belong to live workers elsewhere, and the
    # workers' upkeep finds those that do not (workers/upkeep.py).
    recover_on_start: bool
    # Starts what keeps a worker pool of this process known and its jobs leased.
    keep_up: Callable[[LocalWorker, JobService, contextlib.AsyncExitStack], None]


async def _embedded(
    settings: Settings, db: Database, stack: contextlib.AsyncExitStack, worker_id: str
) -> _Mode:
    queue = LocalQueue(settings.queue_size)
    stack.push_async_callback(queue.close)
    registry = LocalRegistry(None)

    def keep_up(worker: LocalWorker, jobs: JobService, stack: contextlib.AsyncExitStack) -> None:
        registry.worker = worker

    return _Mode(LocalEventBus(), queue, registry, recover_on_start=True, keep_up=keep_up)


async def _scale_out(
    settings: Settings, db: Database, stack: contextlib.AsyncExitStack, worker_id: str
) -> _Mode:
    if db.is_sqlite:
        raise ValueError(
            "scale-out mode (EXECBOX_REDIS_URL) needs a database all processes share: "
            "set EXECBOX_DATABASE_URL=postgresql+asyncpg://USER@HOST/DB"
        )
    redis = connect(settings)
    bus = RedisEventBus(redis, settings.redis_prefix)
    await bus.start()
    stack.push_async_callback(bus.close)
    queue = RedisQueue(redis, settings, worker_id)
    stack.push_async_callback(queue.close)
    registry = RedisRegistry(queue.saq, ttl_s=settings.lease_s)

    def keep_up(worker: LocalWorker, jobs: JobService, stack: contextlib.AsyncExitStack) -> None:
        upkeep = Upkeep(settings, queue=queue, jobs=jobs, registry=registry, worker=worker)
        upkeep.start()
        # Stopped after the pool (exit callbacks run in reverse): a draining pool's
        # jobs keep their leases.
        stack.push_async_callback(upkeep.stop)

    return _Mode(bus, queue, registry, recover_on_start=False, keep_up=keep_up)
