"""Jobs: the lifecycle state machine, and the service that moves jobs through it.

    queued ──► running ──► completed | failed | cancelled
      │           │
      │           └──► queued   (re-queued: server restart or shutdown mid-run)
      └──► cancelled | failed

Every transition is written to the store (with its events, in one transaction)
before it is published on the bus, so whoever hears of it can read it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import structlog

from execbox.events import EventBus, Lagged, Subscription
from execbox.models import ErrorInfo, ExecutionRequest, ExecutionResult, LanguageRef, Status
from execbox.queue import JobQueue
from execbox.store import TERMINAL, EventKind, Job, JobEvent, JobStore, utcnow

# The reason on the first status event of a job whose stdin is a live connection
# (WS /v1/executions/interactive): such a job cannot run again without it.
INTERACTIVE = "interactive"

log = structlog.get_logger(__name__)

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.QUEUED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, job_id: str, current: Status, target: Status) -> None:
        super().__init__(f"job {job_id} is {current.value}; it cannot become {target.value}")
        self.current = current
        self.target = target


class JobNotFound(LookupError):
    pass


class LeaseLost(Exception):
    """The job was taken over (its worker was presumed lost): this run's writes are refused."""

    def __init__(self, job_id: str, attempt: int) -> None:
        super().__init__(f"job {job_id} is no longer at attempt {attempt}: another worker took it")


def sources_of(target: Status) -> frozenset[Status]:
    """The statuses a job may reach ``target`` from."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def new_job_id() -> str:
    """32 hex digits: microseconds since the epoch, then randomness. Sorting ids sorts
    jobs by creation, which makes the id the list order and the pagination cursor."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(9)}"


def to_result(job: Job) -> ExecutionResult:
    outcome = job.outcome or {}
    return ExecutionResult(
        id=job.id,
        status=job.status,
        language=LanguageRef(name=job.language, version=job.language_version),
        verdict=job.verdict,
        compile=outcome.get("compile"),
        run=outcome.get("run"),
        tests=outcome.get("tests"),
        error=(
            ErrorInfo(message=job.error_message or "", debug_id=job.error_debug_id)
            if job.error_debug_id
            else None
        ),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _status_event(status: Status, **detail: Any) -> JobEvent:
    return JobEvent(EventKind.STATUS, {"status": status.value, **detail})


class JobService:
    def __init__(self, store: JobStore, bus: EventBus, queue: JobQueue) -> None:
        self.store = store
        self.bus = bus
        self.queue = queue

    # -- reading -------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    # -- transitions -----------------------------------------------------------

    async def _transition(
        self,
        job_id: str,
        target: Status,
        events: Sequence[JobEvent] = (),
        *,
        allowed_from: Iterable[Status] | None = None,
        fence: int | None = None,
        new_attempt: bool = False,
        **values: Any,
    ) -> Job:
        """Persists, then publishes. ``allowed_from`` narrows the legal sources; ``fence``
        (an attempt number) makes the write conditional on the job still being at it;
        ``new_attempt`` counts a start of the job."""
        expected = sources_of(target) & frozenset(allowed_from or sources_of(target))
        finished = target in TERMINAL
        now = utcnow()
        if finished:
            values.setdefault("finished_at", now)
        events = [*events, _status_event(target, **_reason(values))]
        if finished:
            events.append(JobEvent(EventKind.RESULT, at=now))
        changed = await self.store.transition(
            job_id,
            expected=expected,
            status=target,
            events=events,
            fence=fence,
            new_attempt=new_attempt,
            **values,
        )
        if changed is None:
            current = await self.get(job_id)
            if fence is not None and current.attempts != fence:
                raise LeaseLost(job_id, fence)
            raise IllegalTransition(job_id, current.status, target)
        job, published = changed
        if finished:
            # The result event is stored empty (the job row is the result); live
            # listeners get it whole so they need not read it back.
            result = to_result(job).model_dump(mode="json")
            published = [
                *published[:-1],
                JobEvent(EventKind.RESULT, result, now, published[-1].seq),
            ]
        await self.bus.publish(job_id, published)
        return job

    async def submit(
        self, request: ExecutionRequest, language: LanguageRef, job_id: str | None = None
    ) -> Job:
        """Persists a new queued job, then queues it. Raises QueueFull first if full."""
        await self.queue.check_capacity()
        job = Job(
            id=job_id or new_job_id(),
            status=Status.QUEUED,
            language=language.name,
            language_version=language.version,
            request=request,
            created_at=utcnow(),
        )
        events = await self.store.create(job, [_status_event(Status.QUEUED)])
        await self.bus.publish(job.id, events)
        await self.queue.put(job)
        return job

    async def claim(self, job_id: str, worker_id: str | None = None) -> Job | None:
        """queued → running, for the worker that took the job; None when the job is
        no longer queued (cancelled meanwhile, or taken by another worker).

        The claimed job's ``attempts`` is the fence of this run: the worker passes it
        to every later write, which is refused (LeaseLost) once another worker has
        taken the job over, so a job delivered twice never gets two results."""
        try:
            return await self._transition(
                job_id,
                Status.RUNNING,
                new_attempt=True,
                started_at=utcnow(),
                worker_id=worker_id,
                heartbeat_at=utcnow(),
            )
        except (IllegalTransition, JobNotFound):
            return None

    async def record(
        self, job_id: str, events: Sequence[JobEvent], fence: int | None = None
    ) -> None:
        """Adds stage and output events of a running job."""
        published = await self.store.append(job_id, events, fence)
        if published is None:
            raise LeaseLost(job_id, fence or 0)
        await self.bus.publish(job_id, published)

    async def complete(
        self,
        job_id: str,
        result: ExecutionResult,
        events: Sequence[JobEvent] = (),
        fence: int | None = None,
    ) -> Job:
        return await self._transition(
            job_id,
            Status.COMPLETED,
            events,
            fence=fence,
            verdict=result.verdict.value if result.verdict else None,
            language_version=result.language.version,
            outcome=result.model_dump(
                mode="json", include={"compile", "run", "tests"}, exclude_none=True
            ),
        )

    async def fail(
        self,
        job_id: str,
        message: str,
        debug_id: str,
        events: Sequence[JobEvent] = (),
        fence: int | None = None,
    ) -> Job:
        error = JobEvent(EventKind.ERROR, {"message": message, "debug_id": debug_id})
        return await self._transition(
            job_id,
            Status.FAILED,
            [*events, error],
            fence=fence,
            error_message=message,
            error_debug_id=debug_id,
        )

    async def cancelled(
        self, job_id: str, events: Sequence[JobEvent] = (), fence: int | None = None
    ) -> Job:
        """running → cancelled, by the worker that stopped the job."""
        return await self._transition(
            job_id, Status.CANCELLED, events, allowed_from={Status.RUNNING}, fence=fence
        )

    async def requeue(
        self, job_id: str, reason: str, events: Sequence[JobEvent] = (), fence: int | None = None
    ) -> Job:
        job = await self._transition(
            job_id, Status.QUEUED, events, fence=fence, started_at=None, reason=reason
        )
        await self.queue.put(job)
        return job

    async def hand_back(self, job: Job, *, reason: str, lost: str, max_attempts: int) -> Job | None:
        """A running job whose run is gone: queued again (``reason`` goes to the log), or
        failed once ``lost`` (what happened to its run) happened ``max_attempts`` times.
        Fenced on the run's attempt, so it is a no-op (None) if the job moved on
        meanwhile. The caller queues it."""
        try:
            if job.attempts < max_attempts:
                return await self._transition(
                    job.id, Status.QUEUED, fence=job.attempts, started_at=None, reason=reason
                )
            debug_id = secrets.token_hex(6)
            message = f"{lost} {job.attempts} times while running this job; it was given up"
            log.error("job abandoned", job_id=job.id, debug_id=debug_id, reason=message)
            return await self.fail(job.id, message, debug_id, fence=job.attempts)
        except (IllegalTransition, LeaseLost):
            return None

    # -- for callers -------------------------------------------------------------

    async def cancel(self, job_id: str, timeout_s: float = 10) -> ExecutionResult:
        """Cancels a queued job at once; asks the worker of a running one to kill it
        and waits (up to ``timeout_s``) until it has. Idempotent."""
        async with self.bus.subscribe(job_id) as subscription:
            job = await self.get(job_id)
            if job.status == Status.QUEUED:
                with contextlib.suppress(IllegalTransition):
                    job = await self._transition(
                        job_id, Status.CANCELLED, allowed_from={Status.QUEUED}
                    )
                    return to_result(job)
                job = await self.get(job_id)  # a worker took it meanwhile
            if job.status == Status.CANCELLED:
                return to_result(job)
            if job.status != Status.RUNNING:
                raise IllegalTransition(job_id, job.status, Status.CANCELLED)
            await self.bus.request_cancel(job_id)
            try:
                async with asyncio.timeout(timeout_s):
                    return await self.wait(job_id, subscription)
            except TimeoutError:
                return to_result(await self.get(job_id))

    async def wait(self, job_id: str, subscription: Subscription) -> ExecutionResult:
        """The job's result once it is finished. The subscription must have begun before
        the job could finish: before submitting it, or before reading its status."""
        while True:
            try:
                async for event in subscription:
                    if event.kind == EventKind.RESULT and event.data is not None:
                        return ExecutionResult.model_validate(event.data)
            except Lagged:
                job = await self.get(job_id)
                if job.status in TERMINAL:
                    return to_result(job)

    # -- housekeeping ------------------------------------------------------------

    async def recover(self, max_attempts: int) -> int:
        """After a restart of the embedded mode: jobs left running are re-queued (or
        failed once they were started ``max_attempts`` times), and every queued job
        goes back into the queue, which lived in memory. Interactive jobs are cancelled
        instead: their stdin was a connection that is gone, and a re-run without it
        would answer nobody. Returns how many jobs were queued again."""
        for job_id in await self.store.ids(Status.RUNNING):
            if await self._interactive(job_id):
                await self._end_session(job_id)
                continue
            await self.hand_back(
                await self.get(job_id),
                reason="the server restarted",
                lost="the server stopped",
                max_attempts=max_attempts,
            )
        queued = 0
        for job_id in await self.store.ids(Status.QUEUED):
            if await self._interactive(job_id):
                await self._end_session(job_id)
                continue
            await self.queue.put(await self.get(job_id))
            queued += 1
        return queued

    async def _interactive(self, job_id: str) -> bool:
        events = await self.store.events(job_id, kinds=[EventKind.STATUS])
        return bool(events) and (events[0].data or {}).get("reason") == INTERACTIVE

    async def _end_session(self, job_id: str) -> None:
        await self._transition(
            job_id,
            Status.CANCELLED,
            allowed_from={Status.QUEUED, Status.RUNNING},
            reason="the interactive session ended: the server restarted",
        )

    async def prune(self, retention: timedelta) -> int:
        return await self.store.prune(utcnow() - retention)


def _reason(values: dict[str, Any]) -> dict[str, Any]:
    """Moves a ``reason`` for the activity log out of the column values."""
    reason = values.pop("reason", None)
    return {"reason": reason} if reason else {}
