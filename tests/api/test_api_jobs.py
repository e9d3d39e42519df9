"""The job state machine and its store, on SQLite and PostgreSQL (no sandbox needed)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from execbox.bus import Lagged, LocalEventBus, Subscription
from execbox.jobs.recovery import recover_after_restart
from execbox.jobs.service import JobService
from execbox.jobs.states import IllegalTransition
from execbox.models import ExecutionRequest, ExecutionResult, LanguageRef, Stage, Status, Verdict
from execbox.queue import LocalQueue
from execbox.store import Database, EventKind, JobEvent, JobStore
from execbox.store.wal import CHECKPOINT_EVERY, WalCheckpointer
from kit.databases import drop_schema

LANG = LanguageRef(name="python", version="3")
REQUEST = ExecutionRequest(language="python", code="print(1)")


@dataclass
class Backing:
    """What a JobService is built over (it exposes none of it)."""

    store: JobStore
    bus: LocalEventBus
    queue: LocalQueue


@pytest.fixture
async def backing(backend: dict[str, str]) -> AsyncIterator[Backing]:
    tmp = Path(tempfile.mkdtemp(prefix="execbox-store-"))
    schema = None
    if "EXECBOX_DATABASE_URL" in backend:
        url = backend["EXECBOX_DATABASE_URL"]
        schema = backend["EXECBOX_DATABASE_SCHEMA"] + "_jobs"
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'jobs.db'}"
    db = Database(url, schema)
    await db.migrate()
    try:
        yield Backing(JobStore(db), LocalEventBus(), LocalQueue(100))
    finally:
        await db.close()
        if schema:
            await asyncio.to_thread(drop_schema, schema)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def jobs(backing: Backing) -> JobService:
    return JobService(backing.store, backing.bus, backing.queue)


def _result(stdout: str = "1\n") -> ExecutionResult:
    return ExecutionResult(
        status=Status.COMPLETED,
        language=LANG,
        verdict=Verdict.OK,
        run=Stage(stdout=stdout, verdict=Verdict.OK, exit_code=0),
    )


async def test_illegal_transitions_are_refused(jobs: JobService) -> None:
    job = await jobs.submit(REQUEST, LANG)
    with pytest.raises(IllegalTransition, match="queued; it cannot become completed"):
        await jobs.complete(job.id, _result())
    assert (await jobs.claim(job.id)) is not None
    assert (await jobs.claim(job.id)) is None  # a second worker does not get it
    await jobs.complete(job.id, _result())
    for attempt in (
        jobs.complete(job.id, _result()),
        jobs.cancelled(job.id),
        jobs.requeue(job.id, "no"),
        jobs.fail(job.id, "no", "x"),
    ):
        with pytest.raises(IllegalTransition):
            await attempt
    assert (await jobs.get(job.id)).status == Status.COMPLETED


async def test_transitions_are_persisted_before_they_are_published(
    jobs: JobService, backing: Backing
) -> None:
    job = await jobs.submit(REQUEST, LANG)
    seen: list[tuple[int, int]] = []
    async with backing.bus.subscribe(job.id) as subscription:

        async def follow() -> None:
            async for event in subscription:
                # Whatever is heard of is already in the store.
                seen.append((event.seq, (await jobs.get(job.id)).event_seq))
                if event.kind == EventKind.RESULT:
                    return

        follower = asyncio.create_task(follow())
        await jobs.claim(job.id)
        await jobs.record(job.id, [JobEvent(EventKind.STDOUT, {"stage": "run", "data": "1\n"})])
        await jobs.complete(job.id, _result())
        await follower
    assert len(seen) == 4
    assert all(stored >= heard for heard, stored in seen)
    events = await backing.store.events(job.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.kind for e in events] == [
        EventKind.STATUS, EventKind.STATUS, EventKind.STDOUT, EventKind.STATUS, EventKind.RESULT,
    ]  # fmt: skip


async def test_recovery_requeues_or_gives_up(jobs: JobService, backing: Backing) -> None:
    fresh = await jobs.submit(REQUEST, LANG)
    await jobs.claim(fresh.id)
    tired = await jobs.submit(REQUEST, LANG)
    for _ in range(2):
        await jobs.claim(tired.id)
        await jobs.requeue(tired.id, "test")
    await jobs.claim(tired.id)  # third start
    waiting = await jobs.submit(REQUEST, LANG)

    queue = LocalQueue(100)
    restarted = JobService(backing.store, LocalEventBus(), queue)  # as after a restart
    assert await recover_after_restart(restarted, max_attempts=3) == 2
    assert (await jobs.get(fresh.id)).status == Status.QUEUED
    failed = await jobs.get(tired.id)
    assert failed.status == Status.FAILED
    assert failed.error_message and "3 times" in failed.error_message
    queued = {await queue.get(), await queue.get()}
    assert queued == {fresh.id, waiting.id}


async def test_recovery_cancels_interactive_jobs_instead_of_rerunning_them(
    jobs: JobService, backing: Backing
) -> None:
    """Their stdin was a WebSocket that died with the server: a re-run would read EOF."""
    sessions = []
    for _ in range(2):  # one running, one not yet claimed when the server died
        job = await jobs.submit(REQUEST, LANG, interactive=True)
        sessions.append(job.id)
    await jobs.claim(sessions[0])
    plain = await jobs.submit(REQUEST, LANG)

    queue = LocalQueue(100)
    restarted = JobService(backing.store, LocalEventBus(), queue)
    assert await recover_after_restart(restarted, max_attempts=3) == 1
    assert await queue.get() == plain.id
    for job_id in sessions:
        assert (await jobs.get(job_id)).status == Status.CANCELLED
        reasons = [e.data.get("reason") for e in await backing.store.events(job_id) if e.data]
        assert "the interactive session ended: the server restarted" in reasons


async def test_old_finished_jobs_are_pruned(jobs: JobService, backing: Backing) -> None:
    old = await jobs.submit(REQUEST, LANG)
    await jobs.claim(old.id)
    await jobs.complete(old.id, _result())
    running = await jobs.submit(REQUEST, LANG)
    await jobs.claim(running.id)
    assert await jobs.prune(timedelta(days=1)) == 0
    assert await jobs.prune(timedelta(seconds=-1)) == 1  # everything finished is "old"
    assert await backing.store.events(old.id) == []
    assert (await jobs.get(running.id)).status == Status.RUNNING


async def test_a_lagging_subscriber_is_told_and_catches_up_from_the_store(
    jobs: JobService,
) -> None:
    subscription = Subscription(maxsize=2)
    for seq in (1, 2, 3):  # one more than it holds
        subscription.deliver(JobEvent(EventKind.STDOUT, {"data": "x"}, seq=seq))
    with pytest.raises(Lagged):
        await anext(subscription)
    subscription.deliver(JobEvent(EventKind.STDOUT, seq=4))
    assert (await anext(subscription)).seq == 4  # dropped events are gone; fresh ones flow

    # wait() reads a lagging job's outcome back from the store.
    job = await jobs.submit(REQUEST, LANG)
    await jobs.claim(job.id)
    await jobs.complete(job.id, _result("done\n"))
    lagging = Subscription(maxsize=1)
    lagging.deliver(JobEvent(EventKind.STATUS))
    lagging.deliver(JobEvent(EventKind.STATUS))
    result = await jobs.wait(job.id, lagging)
    assert result.run is not None and result.run.stdout == "done\n"


async def test_the_sqlite_log_is_checkpointed_in_a_thread_not_by_a_commit(tmp_path: Path) -> None:
    # The serving connection never checkpoints: the commit that did would stall the loop.
    db = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        async with db.read() as conn:
            assert (await conn.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar() == 0
    finally:
        await db.close()

    # The checkpointer copies the log into the database file every CHECKPOINT_EVERY writes.
    path = tmp_path / "log.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x TEXT)")
    size = path.stat().st_size
    checkpointer = WalCheckpointer(str(path))
    try:
        for _ in range(CHECKPOINT_EVERY):
            assert path.stat().st_size == size  # the writes are all in the log so far
            writer.execute("INSERT INTO t VALUES (?)", ("x" * 1000,))
            checkpointer.written()
        await checkpointer.close()  # waits for the checkpoint the last write started
        assert path.stat().st_size > size
    finally:
        writer.close()
