"""`execbox worker`: a worker process of scale-out mode, as a plain function."""

from __future__ import annotations

import asyncio
import signal

import structlog

from execbox.config import Settings, get_settings
from execbox.logging import configure_logging
from execbox.wiring import Services

log = structlog.get_logger(__name__)


def run_worker(concurrency: int | None = None, settings: Settings | None = None) -> None:
    """Takes jobs from Redis until SIGTERM/SIGINT; then takes no new job, lets running
    ones finish for EXECBOX_SHUTDOWN_GRACE_S and hands the rest back to the queue."""
    settings = settings or get_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"workers": concurrency})
    configure_logging(settings.log_level)
    if not settings.scale_out:
        raise SystemExit(
            "execbox worker takes jobs from Redis: set EXECBOX_REDIS_URL (and "
            "EXECBOX_DATABASE_URL to the API's PostgreSQL). Without them, `execbox serve` "
            "runs its own workers."
        )
    asyncio.run(_work(settings))


async def _work(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    services = await Services.start(settings, workers=True)
    log.info("worker started", concurrency=settings.workers)
    try:
        await stop.wait()
        log.info("worker stopping: draining running jobs", grace_s=settings.shutdown_grace_s)
    finally:
        await services.stop()
    log.info("worker stopped")
