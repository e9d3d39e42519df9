"""Workers: take a job from the queue, run it, record what happens.

The same code serves the embedded mode (a pool of tasks in the API process) and
dedicated worker processes.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog

from execbox.jobs import JobService, LeaseLost, to_result
from execbox.logging import internal_error
from execbox.metrics import Metrics
from execbox.models import ExecutionResult
from execbox.queue import JobQueue
from execbox.runner import InvalidRequest, Runner, RunnerEvent
from execbox.sandbox import SandboxBusy, SandboxError
from execbox.store import EventKind, Job, JobEvent
from execbox.webhooks import Webhooks

log = structlog.get_logger(__name__)

# Output is written in batches: at most this long after it was produced, or sooner
# when this much is waiting. A chatty program then costs a few commits a second,
# not one per chunk, and a short one's output rides along with its result.
FLUSH_AFTER_S = 0.05
FLUSH_BYTES = 256 << 10
EARLY_CANCELS_KEPT = 1024


@dataclass
class _Chunk:
    kind: EventKind
    stage: str
    text: list[str] = field(default_factory=list)
    raw: bytes | None = None  # set instead of text when the bytes are not UTF-8


class EventLog:
    """Stage and output events of a running job, in order, written in batches.

    Output is decoded incrementally, so a character split across chunks stays whole;
    bytes that are not UTF-8 are kept exact as ``data_base64``.
    """

    def __init__(self, jobs: JobService, job_id: str, fence: int | None = None) -> None:
        self._jobs = jobs
        self._job_id = job_id
        self._fence = fence
        self._pending: list[JobEvent | _Chunk] = []
        self._pending_bytes = 0
        self._decoders: dict[tuple[EventKind, str], codecs.IncrementalDecoder] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._writing = False
        self._closed = False
        self._full = asyncio.Event()

    def add(self, event: RunnerEvent) -> None:
        if event.kind == "stage":
            self._pending.append(JobEvent(EventKind.STAGE, {"stage": event.stage}))
        else:
            self._add_output(EventKind(event.kind), event.stage, event.data)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())

    def _add_output(self, kind: EventKind, stage: str, data: bytes) -> None:
        decoder = self._decoders.setdefault((kind, stage), codecs.getincrementaldecoder("utf-8")())
        held = decoder.getstate()[0]
        try:
            text: str | None = decoder.decode(data)
        except UnicodeDecodeError:
            decoder.reset()
            text = None
        last = self._pending[-1] if self._pending else None
        if text is None:
            self._pending.append(_Chunk(kind, stage, raw=held + data))
        elif not text:
            return
        elif isinstance(last, _Chunk) and (last.kind, last.stage, last.raw) == (kind, stage, None):
            last.text.append(text)
        else:
            self._pending.append(_Chunk(kind, stage, [text]))
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self._full.set()

    async def _flush_later(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_AFTER_S):
                await self._full.wait()
        self._writing = True
        try:
            await self._jobs.record(self._job_id, self._take(), self._fence)
        except LeaseLost:
            log.warning("job taken over by another worker; its output here is dropped")
        except Exception:
            # The output still reaches the result; only the live log misses it.
            internal_error("could not record output events")
        finally:
            self._writing = False
            more = self._pending and not self._closed
            self._flusher = asyncio.create_task(self._flush_later()) if more else None

    def _take(self) -> list[JobEvent]:
        events = [_event(item) if isinstance(item, _Chunk) else item for item in self._pending]
        self._pending = []
        self._pending_bytes = 0
        self._full.clear()
        return events

    async def close(self) -> list[JobEvent]:
        """Stops batching; returns what is not yet written, to go with the final
        transition (so a short job needs no separate write for its output)."""
        self._closed = True
        while self._flusher is not None:
            if self._writing:
                await asyncio.wait([self._flusher])
            else:
                self._flusher.cancel()
                self._flusher = None
        for (kind, stage), decoder in self._decoders.items():
            held = decoder.getstate()[0]
            if held:  # the output ended inside a character
                self._pending.append(_Chunk(kind, stage, raw=held))
        self._decoders.clear()
        return self._take()


def _event(chunk: _Chunk) -> JobEvent:
    data: dict[str, Any] = {"stage": chunk.stage}
    if chunk.raw is not None:
        data["data_base64"] = base64.b64encode(chunk.raw).decode()
    else:
        data["data"] = "".join(chunk.text)
    return JobEvent(chunk.kind, data)


@dataclass
class _Running:
    task: asyncio.Task[ExecutionResult]
    stop_reason: str | None = None  # "cancel" | "shutdown" | "lost" once asked to stop


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

    def __init__(
        self,
        *,
        runner: Runner,
        jobs: JobService,
        queue: JobQueue,
        webhooks: Webhooks,
        metrics: Metrics,
        concurrency: int,
        worker_id: str | None = None,
    ) -> None:
        self.runner = runner
        self.worker_id = worker_id
        self.jobs = jobs
        self.queue = queue
        self.webhooks = webhooks
        self.metrics = metrics
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[str, _Running] = {}
        self._idle: set[asyncio.Task[None]] = set()
        # Cancel requests that arrived while the job was being claimed here, between
        # its "running" commit and its registration below (bounded: most are for
        # jobs of other workers).
        self._early_cancels: OrderedDict[str, None] = OrderedDict()
        self._stopping = False
        jobs.bus.on_cancel_request(self._on_cancel_request)

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._loop(), name=f"execbox-worker-{i}")
            for i in range(2 * self.concurrency)
        ]

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

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
                for running in self._running.values():
                    self._stop(running, "shutdown")
        await asyncio.gather(*self._loops, return_exceptions=True)

    def abandon(self, job_id: str) -> None:
        """Stops a run whose job another worker took over (this worker was presumed
        lost): its sandbox is killed and nothing more is written."""
        running = self._running.get(job_id)
        if running is not None:
            self._stop(running, "lost")

    def _on_cancel_request(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is not None:
            self._stop(running, "cancel")
        else:
            self._early_cancels[job_id] = None
            while len(self._early_cancels) > EARLY_CANCELS_KEPT:
                self._early_cancels.popitem(last=False)

    @staticmethod
    def _stop(running: _Running, reason: str) -> None:
        if running.stop_reason is None:
            running.stop_reason = reason
            running.task.cancel()  # the runner kills the sandbox at once

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
                    await self._run(job_id, slot)
                except LeaseLost:
                    log.warning("job taken over by another worker; this run's outcome is dropped")
                except Exception:
                    # The job could not even be recorded as failed (store down?):
                    # log and keep the worker alive; recovery finds the job later.
                    internal_error("worker could not record a job")
                finally:
                    slot.release()
                    await self.queue.done(job_id)

    async def _run(self, job_id: str, slot: _Slot) -> None:
        job = await self.jobs.claim(job_id, self.worker_id)
        if job is None:
            return
        fence = job.attempts
        self.metrics.record_started(job)
        events = EventLog(self.jobs, job_id, fence)
        running = _Running(
            asyncio.create_task(self.runner.execute(job.request, on_event=events.add))
        )
        self._running[job_id] = running
        if job_id in self._early_cancels:
            del self._early_cancels[job_id]
            self._stop(running, "cancel")
        try:
            try:
                result = await running.task
            finally:
                slot.release()  # the sandbox is done: the next job may start
        except asyncio.CancelledError:
            if running.stop_reason is None:
                raise
            pending = await events.close()
            if running.stop_reason == "lost":
                log.warning("job taken over by another worker; its run here was stopped")
                return
            if running.stop_reason == "cancel":
                job = await self.jobs.cancelled(job_id, pending, fence)
            else:
                await self.jobs.requeue(job_id, "the server shut down", pending, fence)
                return
        except Exception as exc:
            pending = await events.close()
            if isinstance(exc, InvalidRequest):
                message = f"the request cannot run: {exc}"
            elif isinstance(exc, SandboxBusy):
                message = f"no sandbox was free to run it: {exc}"
            else:
                message = "execbox failed to run this job (an internal error)"
            if isinstance(exc, SandboxError):
                self.metrics.sandbox_failures.inc()
            debug_id = internal_error("job failed", error=type(exc).__name__)
            job = await self.jobs.fail(job_id, message, debug_id, pending, fence)
        else:
            job = await self.jobs.complete(job_id, result, await events.close(), fence)
        finally:
            self._running.pop(job_id, None)
            self.metrics.record_finished()
        self._finished(job)

    def _finished(self, job: Job) -> None:
        result = to_result(job)
        self.metrics.record_result(result)
        log.info(
            "job finished", status=job.status.value, verdict=job.verdict, language=job.language
        )
        if job.callback_url:
            self.webhooks.send(job.callback_url, result)
