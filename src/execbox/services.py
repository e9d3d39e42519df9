"""Wiring: builds the parts of a running execbox (store, bus, queue, runner,
workers, webhooks, metrics) from the settings, and takes them down in order."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from execbox.config import Settings
from execbox.events import EventBus, LocalEventBus
from execbox.jobs import JobService
from execbox.languages import LanguageInfo
from execbox.logging import internal_error
from execbox.metrics import Metrics
from execbox.models import LanguageRef
from execbox.queue import JobQueue, LocalQueue
from execbox.runner import Runner
from execbox.store import Database, JobStore
from execbox.webhooks import Webhooks
from execbox.worker import WorkerPool

log = structlog.get_logger(__name__)

PRUNE_EVERY_S = 3600


@dataclass
class Services:
    settings: Settings
    db: Database
    runner: Runner
    bus: EventBus
    queue: JobQueue
    jobs: JobService
    metrics: Metrics
    webhooks: Webhooks
    workers: WorkerPool | None
    _stack: contextlib.AsyncExitStack
    _languages: dict[str, LanguageInfo] = field(default_factory=dict)

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        """Embedded mode: in-process queue and bus, a worker pool in this process."""
        async with contextlib.AsyncExitStack() as stack:
            db = Database(settings.database, settings.database_schema)
            stack.push_async_callback(db.close)
            await db.migrate()
            runner = await Runner.create(settings)
            stack.push_async_callback(runner.close)
            bus = LocalEventBus()
            queue = LocalQueue(settings.queue_size)
            stack.push_async_callback(queue.close)
            metrics = Metrics()
            webhooks = Webhooks(settings, metrics)
            stack.push_async_callback(webhooks.close, settings.shutdown_grace_s)
            jobs = JobService(JobStore(db), bus, queue)
            requeued = await jobs.recover(settings.max_attempts)
            if requeued:
                log.info("jobs queued again after a restart", count=requeued)
            workers = WorkerPool(
                runner=runner, jobs=jobs, queue=queue, webhooks=webhooks, metrics=metrics,
                concurrency=settings.workers,
            )  # fmt: skip
            workers.start()
            stack.push_async_callback(workers.stop, settings.shutdown_grace_s)
            if settings.retention_days > 0:
                pruner = asyncio.create_task(
                    _prune_forever(jobs, timedelta(days=settings.retention_days))
                )
                stack.callback(pruner.cancel)
            services = cls(
                settings, db, runner, bus, queue, jobs, metrics, webhooks, workers, stack.pop_all()
            )
        services._languages = {
            key.lower(): info for info in runner.languages() for key in (info.name, *info.aliases)
        }
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
