"""A running job's output: batched into few writes, a character split across chunks
kept whole, bytes that are not UTF-8 kept exact (a real JobService over SQLite)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from execbox.bus import LocalEventBus
from execbox.jobs.output import FLUSH_AFTER_S, EventLog
from execbox.jobs.service import JobService
from execbox.models import ExecutionRequest, LanguageRef
from execbox.queue import LocalQueue
from execbox.runner import RunnerEvent
from execbox.store import Database, EventKind, JobEvent, JobStore


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[JobService, JobStore, str]]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await db.migrate()
    store = JobStore(db)
    jobs = JobService(store, LocalEventBus(), LocalQueue(10))
    job = await jobs.submit(ExecutionRequest(language="python", code="1"), LanguageRef(name="py"))
    await jobs.claim(job.id)
    yield jobs, store, job.id
    await db.close()


def _output(events: list[JobEvent]) -> list[dict[str, str]]:
    return [e.data or {} for e in events if e.kind in (EventKind.STDOUT, EventKind.STDERR)]


async def test_chunks_of_one_stream_become_one_event_and_characters_stay_whole(
    parts: tuple[JobService, JobStore, str],
) -> None:
    jobs, store, job_id = parts
    log = EventLog(jobs, job_id)
    euro = "€".encode()
    log.add(RunnerEvent("stage", "running"))
    for chunk in (b"a", euro[:1], euro[1:], b"b\n"):  # the euro sign split in two chunks
        log.add(RunnerEvent("stdout", "run", chunk))
    log.add(RunnerEvent("stderr", "run", b"oops"))
    pending = await log.close()
    assert [e.kind for e in pending] == [EventKind.STAGE, EventKind.STDOUT, EventKind.STDERR]
    assert _output(pending) == [{"stage": "run", "data": "a€b\n"}, {"stage": "run", "data": "oops"}]
    assert _output(await store.events(job_id)) == []  # nothing written: it rides with the end


async def test_bytes_that_are_not_utf8_are_kept_exact(
    parts: tuple[JobService, JobStore, str],
) -> None:
    jobs, _, job_id = parts
    log = EventLog(jobs, job_id)
    log.add(RunnerEvent("stdout", "run", b"ok "))
    log.add(RunnerEvent("stdout", "run", b"\xff\xfe"))
    log.add(RunnerEvent("stdout", "run", "€".encode()[:2]))  # ends inside a character
    out = _output(await log.close())
    assert out[0] == {"stage": "run", "data": "ok "}
    raw = b"".join(base64.b64decode(e["data_base64"]) for e in out[1:])
    assert raw == b"\xff\xfe" + "€".encode()[:2]


async def test_output_is_written_in_batches_while_the_job_runs(
    parts: tuple[JobService, JobStore, str],
) -> None:
    jobs, store, job_id = parts
    log = EventLog(jobs, job_id)
    for _ in range(1000):
        log.add(RunnerEvent("stdout", "run", b"x" * 300))  # past the batch size
    await asyncio.sleep(FLUSH_AFTER_S * 4)  # the program runs on; the batch is written
    written = _output(await store.events(job_id))
    assert len(written) == 1  # one write for a thousand chunks
    assert written[0]["data"] == "x" * 300_000
    log.add(RunnerEvent("stdout", "run", b"tail"))
    assert _output(await log.close()) == [{"stage": "run", "data": "tail"}]
