"""Scale-out mode end to end, with real processes, PostgreSQL and Redis: events and
cancel across API processes, 500 jobs through a SIGKILLed worker, a Redis restart."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kit.cluster import Cluster, TcpProxy, Worker, live_workers, wait_for_workers
from kit.databases import PG_URL, start_redis, stop_redis
from kit.servers import Server, run, sse_events, submit

pytestmark = pytest.mark.timeout(300)

JOBS = 500
SLOW_EVERY = 25  # every 25th job sleeps, so the killed worker surely dies mid-job
GUARD_S = 180  # a guard against a hang, not a measurement


def _program(i: int) -> str:
    return f"sleep 1.5; echo {i}" if i % SLOW_EVERY == 0 else f"echo {i}"


async def _submit_all(cluster: Cluster, programs: list[str]) -> list[str]:
    """Submits without waiting, alternating between the API processes."""
    clients = [httpx.AsyncClient(base_url=api.url, timeout=60) for api in cluster.apis]
    limit = asyncio.Semaphore(16)

    async def one(i: int, code: str) -> str:
        async with limit:
            response = await clients[i % len(clients)].post(
                "/v1/executions", params={"wait": "false"}, json={"language": "bash", "code": code}
            )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    try:
        return list(await asyncio.gather(*(one(i, code) for i, code in enumerate(programs))))
    finally:
        for client in clients:
            await client.aclose()


async def _poll(
    cluster: Cluster, what: str, sql: str, *args: Any, until: Callable[[list[Any]], bool] = bool
) -> list[Any]:
    """Runs the query until ``until(rows)``; fails saying ``what`` never happened."""
    deadline = time.monotonic() + GUARD_S
    while not until(rows := await cluster.query(sql, *args)):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
    return rows


async def _wait_finished(cluster: Cluster, ids: list[str]) -> None:
    await _poll(
        cluster,
        "some jobs never finished",
        "SELECT count(*) AS n FROM jobs WHERE id = ANY($1) AND status IN "
        "('completed', 'failed', 'cancelled')",
        ids,
        until=lambda rows: rows[0]["n"] == len(ids),
    )


async def _assert_completed_once(cluster: Cluster, ids: list[str], programs: list[str]) -> None:
    """Every job completed, with its own output, one result in its log."""
    rows = await cluster.query(
        "SELECT j.id, j.status, j.outcome::jsonb -> 'run' ->> 'stdout' AS stdout, "
        "count(*) FILTER (WHERE e.kind = 'result') AS results, "
        "count(*) FILTER (WHERE e.kind = 'status' AND e.data::jsonb ->> 'status' = 'completed')"
        " AS completions "
        "FROM jobs j JOIN job_events e ON e.job_id = j.id WHERE j.id = ANY($1) GROUP BY j.id",
        ids,
    )
    found = {row["id"]: row for row in rows}
    assert len(found) == len(ids)
    for job_id, code in zip(ids, programs, strict=True):
        row = found[job_id]
        expected = code.rsplit("echo ", 1)[1] + "\n"
        assert (row["status"], row["stdout"]) == ("completed", expected), dict(row)
        assert (row["results"], row["completions"]) == (1, 1), dict(row)


def test_events_and_cancel_cross_api_processes(cluster: Cluster) -> None:
    first, second = cluster.apis
    with (
        httpx.Client(base_url=first.url, timeout=60) as a,
        httpx.Client(base_url=second.url, timeout=60) as b,
    ):
        # Waited for on the first API: its result comes back from a worker via Redis.
        done = run(a, "echo fan-out", language="bash")
        assert (done["status"], done["run"]["stdout"]) == ("completed", "fan-out\n")
        # Replayed in full by the API that did not take it.
        with b.stream("GET", f"/v1/executions/{done['id']}/events") as stream:
            replay = [(e["event"], e["data"].get("status")) for e in sse_events(stream)]
        assert replay[0] == ("status", "queued") and replay[-1] == ("result", "completed")

        # Live: output of a job taken by the first API, streamed by the second, which
        # then cancels it on whichever worker runs it.
        job_id = submit(a, "echo started; sleep 30", language="bash")
        with b.stream("GET", f"/v1/executions/{job_id}/events") as stream:
            events = sse_events(stream)
            for event in events:
                if event["event"] == "stdout":
                    assert event["data"]["data"] == "started\n"
                    break
            cancelled = b.post(f"/v1/executions/{job_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
            rest = list(events)
        assert rest[-1]["event"] == "result" and rest[-1]["data"]["status"] == "cancelled"
        assert a.get(f"/v1/executions/{job_id}").json()["status"] == "cancelled"

        listed = live_workers(first.url)
        assert len(listed) == len(cluster.workers)
        assert {w["concurrency"] for w in listed} == {2}
        assert all("bash" in {lang["name"] for lang in w["languages"]} for w in listed)


async def _kill_mid_job(cluster: Cluster, victim: Worker) -> list[str]:
    """SIGKILLs ``victim`` while it runs one of the slow jobs; returns the jobs the
    database then has as running on it (its lost runs)."""
    assert victim.proc is not None
    pattern = f"%-{victim.proc.pid}-%"
    await _poll(
        cluster,
        "the victim never ran a slow job",
        "SELECT id FROM jobs WHERE status = 'running' AND worker_id LIKE $1 "
        "AND request::jsonb ->> 'code' LIKE 'sleep%'",
        pattern,
    )
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.proc = None
    lost = await cluster.query(
        "SELECT id FROM jobs WHERE status = 'running' AND worker_id LIKE $1", pattern
    )
    return [row["id"] for row in lost]


async def test_500_jobs_and_a_killed_worker(cluster: Cluster) -> None:
    programs = [_program(i) for i in range(JOBS)]
    # The victim is killed while the jobs are still coming in.
    submitting = asyncio.create_task(_submit_all(cluster, programs))
    victim = cluster.workers[0]
    assert victim.proc is not None
    victim_pid = victim.proc.pid
    lost = await _kill_mid_job(cluster, victim)
    assert lost, "the victim held no job when killed"
    ids = await submitting
    await _wait_finished(cluster, ids)
    await _assert_completed_once(cluster, ids, programs)

    # The lost runs were handed back (fenced) and run again by the other worker.
    for job_id in lost:
        row = (await cluster.query("SELECT attempts FROM jobs WHERE id = $1", job_id))[0]
        assert row["attempts"] >= 2
        log = await cluster.query(
            "SELECT data::jsonb ->> 'reason' AS reason FROM job_events "
            "WHERE job_id = $1 AND kind = 'status' AND data::jsonb ->> 'status' = 'queued'",
            job_id,
        )
        assert any("stopped answering" in (r["reason"] or "") for r in log), log
    # Its entry in the registry lapses with its lease.
    deadline = time.monotonic() + GUARD_S
    while any(w["pid"] == victim_pid for w in live_workers(cluster.apis[0].url)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


async def test_graceful_stop_hands_jobs_back(cluster: Cluster) -> None:
    cluster.add_worker()
    wait_for_workers(cluster.apis[0].url, 2)
    with httpx.Client(base_url=cluster.apis[0].url, timeout=60) as client:
        job_id = submit(client, "sleep 4; echo drained", language="bash")
    rows = await _poll(
        cluster,
        "the job never started",
        "SELECT worker_id FROM jobs WHERE id = $1 AND status = 'running'",
        job_id,
    )
    holder = next(
        w for w in cluster.workers if w.proc and f"-{w.proc.pid}-" in rows[0]["worker_id"]
    )
    holder.stop()  # SIGTERM: 2 s of grace (EXECBOX_SHUTDOWN_GRACE_S), then hand back
    await _wait_finished(cluster, [job_id])
    await _assert_completed_once(cluster, [job_id], ["echo drained"])
    reasons = await cluster.query(
        "SELECT data::jsonb ->> 'reason' AS reason FROM job_events WHERE job_id = $1 "
        "AND kind = 'status' AND data::jsonb ->> 'status' = 'queued' ORDER BY seq",
        job_id,
    )
    assert [r["reason"] for r in reasons] == [None, "the server shut down"]


async def test_redis_restart(cluster: Cluster) -> None:
    programs = [f"sleep 0.2; echo {i}" for i in range(40)]
    before = await _submit_all(cluster, programs)
    api = cluster.apis[1]
    stop_redis()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
            refused = await client.post("/v1/executions", json={"language": "bash", "code": "echo"})
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert "Redis" in refused.json()["detail"]
            health = await client.get("/health")
            assert health.status_code == 503
            assert health.json()["checks"]["queue"].startswith("failed: Redis is unreachable")
            assert health.json()["checks"]["database"] == "ok"
            # What needs only the database still works.
            assert (await client.get(f"/v1/executions/{before[0]}")).status_code == 200
    finally:
        start_redis()
    # Redis came back empty (no persistence): what it held is queued again from the
    # database, and new work is taken as before.
    deadline = time.monotonic() + GUARD_S
    for server in cluster.apis:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            while (await client.get("/health")).status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover"
                await asyncio.sleep(0.2)
    after_programs = [f"echo {i}" for i in range(40, 60)]
    after = await _submit_all(cluster, after_programs)
    await _wait_finished(cluster, before + after)
    await _assert_completed_once(cluster, before + after, programs + after_programs)


async def test_database_outage(cluster: Cluster) -> None:
    """An API process whose PostgreSQL goes away answers 503 naming it, then recovers."""
    proxy = TcpProxy()
    proxy.resume()
    through_proxy = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    server = Server({**cluster.env, "EXECBOX_DATABASE_URL": through_proxy})
    try:
        server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            proxy.cut()
            refused = await client.post("/v1/executions", json={"language": "bash", "code": "echo"})
            assert refused.status_code == 503, refused.text
            assert "database" in refused.json()["detail"]
            missing = await client.get("/v1/executions/0123")
            assert missing.status_code == 503, missing.text
            health = (await client.get("/health")).json()
            assert health["checks"]["database"].startswith("failed")
            assert health["checks"]["queue"] == "ok"
            proxy.resume()
            deadline = time.monotonic() + GUARD_S
            while (await client.get("/health")).status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover"
                await asyncio.sleep(0.2)
            done = await client.post("/v1/executions", json={"language": "bash", "code": "echo ok"})
            assert done.status_code == 200 and done.json()["run"]["stdout"] == "ok\n"
    finally:
        if server.proc is not None:
            server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
        proxy.close()
