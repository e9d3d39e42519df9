"""A job's events as Server-Sent Events: the persisted log first (from the start, or
after Last-Event-ID), then live events, until the final ``result``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from execbox.events import Lagged
from execbox.jobs import JobService, to_result
from execbox.store import STREAM_KINDS, EventKind, JobEvent


async def execution_events(
    jobs: JobService, job_id: str, after: int
) -> AsyncIterator[ServerSentEvent]:
    # Subscribe before reading the log, so no event falls between the two; events
    # seen in both are told apart by their sequence number.
    async with jobs.bus.subscribe(job_id) as subscription:
        while True:
            for event in await jobs.store.events(job_id, after=after, kinds=STREAM_KINDS):
                yield await _render(jobs, job_id, event)
                after = event.seq
                if event.kind == EventKind.RESULT:
                    return
            try:
                async for event in subscription:
                    if event.seq <= after or event.kind not in STREAM_KINDS:
                        continue
                    yield await _render(jobs, job_id, event)
                    after = event.seq
                    if event.kind == EventKind.RESULT:
                        return
            except Lagged:
                continue  # read what was missed from the log


async def _render(jobs: JobService, job_id: str, event: JobEvent) -> ServerSentEvent:
    data: dict[str, Any]
    if event.kind == EventKind.RESULT:
        data = event.data or to_result(await jobs.get(job_id)).model_dump(mode="json")
    else:
        data = {**(event.data or {}), "at": event.at.isoformat()}
    return ServerSentEvent(data=json.dumps(data), event=event.kind.value, id=str(event.seq))
