"""What SAQ cannot see, found from the database (real PostgreSQL and Redis, one
process): the running job of a worker that died while Redis lost its state, and
a queued job Redis never got."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from execbox.bus import LocalEventBus
from execbox.config import Settings
from execbox.jobs.service import JobService
from execbox.models import ExecutionRequest, LanguageRef, Status
from execbox.queue.redis import RedisQueue, connect
from execbox.store import Database, JobStore
from execbox.workers.upkeep import Recovery
from kit.databases import PG_URL, REDIS_URL, remove

LANG = LanguageRef(name="bash")
REQUEST = ExecutionRequest(language="bash", code="echo 1")


@pytest.fixture
async def parts() -> AsyncIterator[tuple[JobService, RedisQueue, Recovery]]:
    suffix = secrets.token_hex(4)
    schema, prefix = f"execbox_recovery_{suffix}", f"execbox-recovery-{suffix}"
    settings = Settings(redis_url=REDIS_URL, redis_prefix=prefix, lease_s=0.5, max_attempts=2)
    db = Database(PG_URL, schema)
    await db.migrate()
    queue = RedisQueue(connect(settings), settings, worker_id="the-survivor")
    jobs = JobService(JobStore(db), LocalEventBus(), queue)
    try:
        yield jobs, queue, Recovery(settings, queue=queue, jobs=jobs)
    finally:
        await queue.close()
        await db.close()
        await asyncio.to_thread(remove, schema, prefix)


async def _forget_in_redis(queue: RedisQueue, job_id: str) -> None:
    """As a Redis restart without persistence would."""
    await queue.redis.delete(queue.saq.job_id(job_id), queue.saq.namespace("queued"))
    await queue.redis.zrem(queue.saq.namespace("incomplete"), queue.saq.job_id(job_id))


async def test_lost_runs_and_lost_queue_entries_are_recovered(
    parts: tuple[JobService, RedisQueue, Recovery],
) -> None:
    jobs, queue, recovery = parts
    orphan = await jobs.submit(REQUEST, LANG)
    assert await queue.get() == orphan.id
    assert await jobs.claim(orphan.id, "a-dead-worker") is not None
    await queue.done(orphan.id)  # SAQ's record is gone, as after a Redis restart
    forgotten = await jobs.submit(REQUEST, LANG)
    await _forget_in_redis(queue, forgotten.id)
    fresh = await jobs.submit(REQUEST, LANG)  # running and renewed: left alone
    assert await queue.get() == fresh.id
    await jobs.claim(fresh.id, "the-survivor")

    await asyncio.sleep(1)  # the orphan's lease (0.5 s) runs out
    await jobs.renew_leases("the-survivor", [fresh.id])
    await recovery.reconcile()

    assert (await jobs.get(orphan.id)).status == Status.QUEUED
    assert (await jobs.get(fresh.id)).status == Status.RUNNING
    assert await queue.unknown([orphan.id, forgotten.id]) == []  # both queued in Redis
    assert {await queue.get(), await queue.get()} == {orphan.id, forgotten.id}

    # Lost once more: that was its second start (max_attempts=2), so it fails.
    assert await jobs.claim(orphan.id, "another-dead-worker") is not None
    await queue.done(orphan.id)
    await asyncio.sleep(1)
    await recovery.reconcile()
    failed = await jobs.get(orphan.id)
    assert failed.status == Status.FAILED
    assert failed.error_message == (
        "its worker stopped answering 2 times while running this job; it was given up"
    )
