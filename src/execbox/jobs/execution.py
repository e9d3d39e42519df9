"""The one execution path: a job from its claim to its recorded outcome.

Every front door ends here: the worker pool (queued jobs, in ``serve`` and in
``execbox worker``) and the interactive WebSocket (a job whose stdin is the
connection) both call ``JobRunner.run_job``. It claims the job, runs the request,
records the outcome (completed, failed, cancelled, or queued again), counts it in
the metrics and sends the webhook.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from execbox.engine import SandboxBusy, SandboxError
from execbox.jobs.output import EventLog
from execbox.jobs.results import to_result
from execbox.jobs.service import JobService
from execbox.logging import internal_error
from execbox.metrics import Metrics
from execbox.models import ExecutionResult
from execbox.runner import InvalidRequest, Runner, RunnerEvent
from execbox.store import Job
from execbox.webhooks import Webhooks

log = structlog.get_logger(__name__)

EARLY_STOPS_KEPT = 1024

# Why a run was asked to stop: a caller cancelled the job, the process shuts down
# (the job runs again later), or another worker took the job over.
StopReason = Literal["cancel", "shutdown", "lost"]


@dataclass
class _Run:
    task: asyncio.Task[ExecutionResult]
    stop_reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.task.cancel()  # the runner kills the sandbox at once


class JobRunner:
    """Runs jobs in this process, and stops them when asked (from anywhere: a cancel
    request reaches the process running the job through the bus)."""

    def __init__(
        self,
        *,
        jobs: JobService,
        runner: Runner,
        metrics: Metrics,
        webhooks: Webhooks,
        worker_id: str | None = None,
    ) -> None:
        self._jobs = jobs
        self._runner = runner
        self._metrics = metrics
        self._webhooks = webhooks
        self.worker_id = worker_id
        self._runs: dict[str, _Run] = {}
        # Stops asked for while the job was being claimed here, between its "running"
        # commit and its registration (bounded: most are for jobs of other processes).
        self._early_stops: OrderedDict[str, StopReason] = OrderedDict()
        jobs.on_cancel_request(lambda job_id: self.stop(job_id, "cancel"))

    @property
    def running_jobs(self) -> list[str]:
        return list(self._runs)

    def stop(self, job_id: str, reason: StopReason) -> None:
        """Stops the job's run in this process (its sandbox is killed at once), or the
        run about to start."""
        run = self._runs.get(job_id)
        if run is not None:
            run.stop(reason)
            return
        self._early_stops[job_id] = reason
        while len(self._early_stops) > EARLY_STOPS_KEPT:
            self._early_stops.popitem(last=False)

    def stop_all(self, reason: StopReason) -> None:
        for run in self._runs.values():
            run.stop(reason)

    async def run_job(
        self,
        job_id: str,
        *,
        stdin: AsyncIterator[bytes] | None = None,
        on_event: Callable[[RunnerEvent], None] | None = None,
        sandbox_done: Callable[[], None] | None = None,
    ) -> Job | None:
        """Claims, runs and records a job; returns it as recorded, or None when it was
        not this run's to record (taken elsewhere, taken over, queued again).

        ``stdin`` feeds the program live (interactive jobs); ``on_event`` sees every
        stage and output event as it happens; ``sandbox_done`` is called as soon as the
        sandbox is through, before the outcome is recorded."""
        job = await self._jobs.claim(job_id, self.worker_id)
        if job is None:
            if sandbox_done is not None:
                sandbox_done()
            return None
        fence = job.attempts
        self._metrics.record_started(job)
        events = EventLog(self._jobs, job_id, fence)

        def seen(event: RunnerEvent) -> None:
            events.add(event)
            if on_event is not None:
                on_event(event)

        run = _Run(
            asyncio.create_task(self._runner.execute(job.request, on_event=seen, stdin=stdin))
        )
        self._runs[job_id] = run
        if (early := self._early_stops.pop(job_id, None)) is not None:
            run.stop(early)
        try:
            try:
                result = await run.task
            finally:
                if sandbox_done is not None:
                    sandbox_done()
        except asyncio.CancelledError:
            if run.stop_reason is None:
                raise  # this task itself is cancelled, not the run
            pending = await events.close()
            if run.stop_reason == "lost":
                log.warning("job taken over by another worker; its run here was stopped")
                return None
            if run.stop_reason == "shutdown" and not job.interactive:
                await self._jobs.requeue(job_id, "the server shut down", pending, fence)
                return None
            # An interactive job cannot run again without its connection: it ends here.
            job = await self._jobs.cancelled(job_id, pending, fence)
        except Exception as exc:
            pending = await events.close()
            if isinstance(exc, InvalidRequest):
                message = f"the request cannot run: {exc}"
            elif isinstance(exc, SandboxBusy):
                message = f"no sandbox was free to run it: {exc}"
            else:
                message = "execbox failed to run this job (an internal error)"
            if isinstance(exc, SandboxError):
                self._metrics.sandbox_failures.inc()
            debug_id = internal_error("job failed", error=type(exc).__name__)
            job = await self._jobs.fail(job_id, message, debug_id, pending, fence)
        else:
            job = await self._jobs.complete(job_id, result, await events.close(), fence)
        finally:
            self._runs.pop(job_id, None)
            self._metrics.record_finished()
        self._finished(job)
        return job

    def _finished(self, job: Job) -> None:
        result = to_result(job)
        self._metrics.record_result(result)
        log.info(
            "job finished", status=job.status.value, verdict=job.verdict, language=job.language
        )
        if job.callback_url:
            self._webhooks.send(job.callback_url, result)
