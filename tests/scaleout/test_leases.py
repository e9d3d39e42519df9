"""The attempt fence and the hand-back of lost runs, on PostgreSQL (no processes)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from execbox.bus import LocalEventBus
from execbox.jobs.service import JobService, LeaseLost
from execbox.models import ExecutionRequest, ExecutionResult, LanguageRef, Stage, Status, Verdict
from execbox.queue import LocalQueue
from execbox.store import Database, EventKind, JobEvent, JobStore
from kit.databases import PG_URL, drop_schema

LANG = LanguageRef(name="bash")
REQUEST = ExecutionRequest(language="bash", code="echo 1")
RESULT = ExecutionResult(
    status=Status.COMPLETED,
    language=LANG,
    verdict=Verdict.OK,
    run=Stage(stdout="1\n", verdict=Verdict.OK, exit_code=0),
)
LOST = {"reason": "worker w1 stopped answering", "lost": "its worker stopped answering"}


@pytest.fixture
async def store() -> AsyncIterator[JobStore]:
    schema = f"execbox_leases_{secrets.token_hex(4)}"
    db = Database(PG_URL, schema)
    await db.migrate()
    try:
        yield JobStore(db)
    finally:
        await db.close()
        await asyncio.to_thread(drop_schema, schema)


@pytest.fixture
def jobs(store: JobStore) -> JobService:
    return JobService(store, LocalEventBus(), LocalQueue(100))


async def test_a_run_taken_over_cannot_write(jobs: JobService, store: JobStore) -> None:
    job = await jobs.submit(REQUEST, LANG)
    first = await jobs.claim(job.id, "w1")
    assert first is not None and first.attempts == 1
    assert await jobs.hand_back(first, max_attempts=3, **LOST) is not None
    second = await jobs.claim(job.id, "w2")
    assert second is not None and second.attempts == 2
    output = [JobEvent(EventKind.STDOUT, {"stage": "run", "data": "1\n"})]
    with pytest.raises(LeaseLost):
        await jobs.record(job.id, output, fence=first.attempts)
    with pytest.raises(LeaseLost):
        await jobs.complete(job.id, RESULT, fence=first.attempts)
    # A second hand-back of the old run is a no-op: the job moved on.
    assert await jobs.hand_back(first, max_attempts=3, **LOST) is None
    await jobs.record(job.id, output, fence=second.attempts)
    done = await jobs.complete(job.id, RESULT, fence=second.attempts)
    assert done.status == Status.COMPLETED
    kinds = [e.kind for e in await store.events(job.id)]
    assert kinds.count(EventKind.RESULT) == 1 and kinds.count(EventKind.STDOUT) == 1


async def test_lost_too_often_fails_with_the_reason(jobs: JobService) -> None:
    job = await jobs.submit(REQUEST, LANG)
    for attempt in range(1, 4):
        running = await jobs.claim(job.id, f"w{attempt}")
        assert running is not None
        handed = await jobs.hand_back(running, max_attempts=3, **LOST)
        assert handed is not None
    assert handed.status == Status.FAILED
    assert handed.error_message == (
        "its worker stopped answering 3 times while running this job; it was given up"
    )


async def test_leases_expire_unless_renewed(jobs: JobService) -> None:
    renewed = await jobs.submit(REQUEST, LANG)
    silent = await jobs.submit(REQUEST, LANG)
    for job in (renewed, silent):
        await jobs.claim(job.id, "w1")
    assert await jobs.expired_leases(3600) == []
    await asyncio.sleep(1.2)
    assert await jobs.renew_leases("w1", [renewed.id]) == [renewed.id]
    assert await jobs.renew_leases("w2", [silent.id]) == []  # not its worker
    assert [job.id for job in await jobs.expired_leases(1)] == [silent.id]
