"""The job service: moves jobs through their states (states.py).

Every transition is written to the store (with its events, in one transaction)
before it is published on the bus, so whoever hears of it can read it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import structlog

from execbox.bus import EventBus, Lagged, Subscription
from execbox.errors import CallerError
from execbox.jobs.results import to_result
from execbox.jobs.states import TERMINAL, IllegalTransition, Status, sources_of
from execbox.models import ExecutionRequest, ExecutionResult, LanguageRef
from execbox.queue import JobQueue
from execbox.store import ACTIVITY_KINDS, STREAM_KINDS, EventKind, Job, JobEvent, JobStore, utcnow

log = structlog.get_logger(__name__)


class JobNotFound(CallerError, LookupError):
    status = 404

    def __str__(self) -> str:
        return f"no execution with id {self.args[0]}"


class LeaseLost(Exception):
    """The job was taken over (its worker was presumed lost): this run's writes are refused."""

    def __init__(self, job_id: str, attempt: int) -> None:
        super().__init__(f"job {job_id} is no longer at attempt {attempt}: another worker took it")


def new_job_id() -> str:
    """32 hex digits: microseconds since the epoch, then randomness. Sorting ids sorts
    jobs by creation, which makes the id the list order and the pagination cursor."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(9)}"


def _status_event(status: Status, **detail: Any) -> JobEvent:
    return JobEvent(EventKind.STATUS, {"status": status.value, **detail})


class JobService:
    """Moves jobs through their states. Routes, the job runner and recovery use it; the
    store, the bus and the queue behind it are its own."""

    def __init__(self, store: JobStore, bus: EventBus, queue: JobQueue) -> None:
        self._store = store
        self._bus = bus
        self._queue = queue

    # -- reading -------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        job = await self._store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> list[Job]:
        """Newest first; ``before`` is the id of the last job of the previous page."""
        return await self._store.list(status=status, limit=limit, before=before)

    async def activity(self, job_id: str) -> tuple[Job, list[JobEvent]]:
        """The job and its persisted log: transitions, stages, errors."""
        job = await self.get(job_id)
        return job, await self._store.events(job_id, kinds=ACTIVITY_KINDS)

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's stream events after sequence number ``after``: the persisted log
        first, then live ones, until the result (whose data is the result itself)."""
        # Subscribe before reading the log, so no event falls between the two; events
        # seen in both are told apart by their sequence number.
        async with self._bus.subscribe(job_id) as subscription:
            while True:
                for event in await self._store.events(job_id, after=after, kinds=STREAM_KINDS):
                    yield await self._with_result(job_id, event)
                    after = event.seq
                    if event.kind == EventKind.RESULT:
                        return
                try:
                    async for event in subscription:
                        if event.seq <= after or event.kind not in STREAM_KINDS:
                            continue
                        yield await self._with_result(job_id, event)
                        after = event.seq
                        if event.kind == EventKind.RESULT:
                            return
                except Lagged:
                    continue  # read what was missed from the log

    async def _with_result(self, job_id: str, event: JobEvent) -> JobEvent:
        """The result event is stored empty (the job row is the result)."""
        if event.kind != EventKind.RESULT or event.data is not None:
            return event
        result = to_result(await self.get(job_id)).model_dump(mode="json")
        return JobEvent(event.kind, result, event.at, event.seq)

    def subscribe(self, job_id: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Live events of the job from now on."""
        return self._bus.subscribe(job_id)

    def on_cancel_request(self, handler: Callable[[str], None]) -> None:
        """Registers a handler of cancel requests for jobs running in this process."""
        self._bus.on_cancel_request(handler)

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
        changed = await self._store.transition(
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
        await self._bus.publish(job_id, published)
        return job

    async def submit(
        self,
        request: ExecutionRequest,
        language: LanguageRef,
        job_id: str | None = None,
        *,
        interactive: bool = False,
    ) -> Job:
        """Persists a new queued job, then queues it. Raises QueueFull first if full.
        An interactive job (its stdin is a live connection) is not queued: the process
        holding the connection runs it (JobRunner.run_job)."""
        if not interactive:
            await self._queue.check_capacity()
        job = Job(
            id=job_id or new_job_id(),
            status=Status.QUEUED,
            language=language.name,
            language_version=language.version,
            request=request,
            created_at=utcnow(),
            interactive=interactive,
        )
        reason = {"reason": "interactive"} if interactive else {}
        events = await self._store.create(job, [_status_event(Status.QUEUED, **reason)])
        await self._bus.publish(job.id, events)
        if not interactive:
            await self._queue.put(job)
        return job

    async def submit_and_wait(
        self, request: ExecutionRequest, language: LanguageRef
    ) -> ExecutionResult:
        """Submits a job and waits for its result (a synchronous execution)."""
        job_id = new_job_id()
        async with self._bus.subscribe(job_id) as subscription:
            await self.submit(request, language, job_id)
            return await self.wait(job_id, subscription)

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
        published = await self._store.append(job_id, events, fence)
        if published is None:
            raise LeaseLost(job_id, fence or 0)
        await self._bus.publish(job_id, published)

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
        await self._queue.put(job)
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
        async with self._bus.subscribe(job_id) as subscription:
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
            await self._bus.request_cancel(job_id)
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

    async def ids(self, status: Status) -> list[str]:
        return await self._store.ids(status)

    async def end_interactive(self, job_id: str, reason: str) -> None:
        """Cancels an interactive job whose connection is gone: without its stdin it
        can never run again, and a re-run would answer nobody."""
        with contextlib.suppress(IllegalTransition):
            await self._transition(
                job_id,
                Status.CANCELLED,
                allowed_from={Status.QUEUED, Status.RUNNING},
                reason=reason,
            )

    async def queue_again(self, job: Job) -> None:
        """Puts a queued job back into the queue (the queue lived in a dead process)."""
        await self._queue.put(job)

    async def renew_leases(self, worker_id: str, job_ids: Iterable[str]) -> list[str]:
        return await self._store.renew_leases(worker_id, list(job_ids))

    async def expired_leases(self, silent_s: float) -> list[Job]:
        return await self._store.expired_leases(silent_s)

    async def prune(self, retention: timedelta) -> int:
        return await self._store.prune(utcnow() - retention)


def _reason(values: dict[str, Any]) -> dict[str, Any]:
    """Moves a ``reason`` for the activity log out of the column values."""
    reason = values.pop("reason", None)
    return {"reason": reason} if reason else {}
