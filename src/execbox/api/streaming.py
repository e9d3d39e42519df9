"""A job's events as Server-Sent Events: the persisted log first (from the start, or
after Last-Event-ID), then live events, until the final ``result``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from execbox.jobs.service import JobService
from execbox.store import EventKind, JobEvent


async def execution_events(
    jobs: JobService, job_id: str, after: int
) -> AsyncIterator[ServerSentEvent]:
    async for event in jobs.follow(job_id, after):
        yield _render(event)


def _render(event: JobEvent) -> ServerSentEvent:
    data: dict[str, Any]
    if event.kind == EventKind.RESULT:
        data = event.data or {}
    else:
        data = {**(event.data or {}), "at": event.at.isoformat()}
    return ServerSentEvent(data=json.dumps(data), event=event.kind.value, id=str(event.seq))
