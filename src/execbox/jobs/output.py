"""A running job's stage and output events, written to its log in batches."""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog

from execbox.jobs.service import JobService, LeaseLost
from execbox.logging import internal_error
from execbox.runner import RunnerEvent
from execbox.store import EventKind, JobEvent

log = structlog.get_logger(__name__)

# Output is written in batches: at most this long after it was produced, or sooner
# when this much is waiting. A chatty program then costs a few commits a second,
# not one per chunk, and a short one's output rides along with its result.
FLUSH_AFTER_S = 0.05
FLUSH_BYTES = 256 << 10


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
