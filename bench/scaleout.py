"""Scale-out mode, in one run; writes bench/results/scaleout.json.

- Throughput with one `execbox worker` process, then two (same per-process
  concurrency): JOBS bash jobs submitted with wait=false by 8 concurrent clients to
  one API process, timed from the first submission until the database has them all
  completed. The scaling ratio is two workers' throughput over one's. Two programs:
  `echo 1`, which on a small machine measures its CPUs (API, PostgreSQL, Redis,
  workers and sandboxes share them), and `sleep 0.1; echo 1`, a job that waits,
  which measures how the queue spreads work over workers.
- The latency the Redis path adds: sequential wait=true executions of the same
  program against an embedded server (in-process queue and workers) and against
  the scale-out API + one worker, both on the same PostgreSQL; medians and p95.
- The floor for scale: the same program spawned bare (`bash -c 'echo 1'`).

Uses the machine's PostgreSQL (127.0.0.1:5432, db `test`) and Redis (127.0.0.1:6379,
DB 12), in a schema and key prefix of its own, removed afterwards. As root:

    .venv/bin/python bench/scaleout.py [--jobs 200] [--requests 100] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

# The test suite's kits start and remove real deployments; the benchmark reuses them.
TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from kit.cluster import Worker, wait_for_workers  # noqa: E402
from kit.databases import PG_URL, remove  # noqa: E402
from kit.servers import Server  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/12"
BODY = {"language": "bash", "code": "echo 1"}
THROUGHPUT_PROGRAMS = {"echo": "echo 1", "sleep_100ms": "sleep 0.1; echo 1"}
FLOOR = ["/usr/bin/bash", "-c", "echo 1"]
CLIENTS = 8
QUIET = {"EXECBOX_LOG_LEVEL": "warning"}  # a log line per request is not what we measure


@contextmanager
def api(env: dict[str, str]) -> Iterator[str]:
    server = Server({**QUIET, **env})
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def worker(env: dict[str, str], concurrency: int) -> Iterator[Worker]:
    started = Worker({**QUIET, **env})
    started.start(concurrency)
    try:
        yield started
    finally:
        started.stop()


def summary(values_ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values_ms, n=20)
    return {"median_ms": round(statistics.median(values_ms), 3), "p95_ms": round(cuts[18], 3)}


async def latencies(url: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(5):  # warm connections, pools and caches
            await client.post("/v1/executions", json=BODY)
        for _ in range(n):
            started = time.perf_counter()
            response = await client.post("/v1/executions", json=BODY)
            out.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and response.json()["run"]["stdout"] == "1\n"
    return out


async def throughput(url: str, schema: str, jobs: int, code: str) -> float:
    """Jobs per second, from the first submission until all are completed."""
    limit = asyncio.Semaphore(CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def submit() -> str:
            async with limit:
                response = await client.post(
                    "/v1/executions",
                    params={"wait": "false"},
                    json={"language": "bash", "code": code},
                )
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        started = time.perf_counter()
        ids = await asyncio.gather(*(submit() for _ in range(jobs)))
    conn = await asyncpg.connect(
        PG_URL.replace("+asyncpg", ""), server_settings={"search_path": schema}
    )
    try:
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'completed'", ids
            )
            if done == jobs:
                return jobs / (time.perf_counter() - started)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def floor(n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(FLOOR, check=True, stdout=subprocess.DEVNULL)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1, help="jobs at once per worker")
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]  # other work on the machine skews every figure
    suffix = secrets.token_hex(4)
    schema, prefix = f"execbox_bench_{suffix}", f"execbox-bench-{suffix}"
    database = {"EXECBOX_DATABASE_URL": PG_URL, "EXECBOX_DATABASE_SCHEMA": schema}
    scale_out = {**database, "EXECBOX_REDIS_URL": REDIS_URL, "EXECBOX_REDIS_PREFIX": prefix}
    embedded_env = {**database, "EXECBOX_WORKERS": str(args.concurrency)}
    try:
        with api(embedded_env) as url:
            embedded = asyncio.run(latencies(url, args.requests))
        with api(scale_out) as url, worker(scale_out, args.concurrency):
            wait_for_workers(url, 1)
            redis_path = asyncio.run(latencies(url, args.requests))
            one = {
                name: asyncio.run(throughput(url, schema, args.jobs, code))
                for name, code in THROUGHPUT_PROGRAMS.items()
            }
            with worker(scale_out, args.concurrency):
                wait_for_workers(url, 2)
                two = {
                    name: asyncio.run(throughput(url, schema, args.jobs, code))
                    for name, code in THROUGHPUT_PROGRAMS.items()
                }
    finally:
        remove(schema, prefix, REDIS_URL)
    bare = floor(args.requests)

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
        "latency_program": BODY,
        "jobs": args.jobs,
        "concurrency_per_worker": args.concurrency,
        "throughput_jobs_per_s": {
            name: {
                "code": code,
                "one_worker": round(one[name], 1),
                "two_workers": round(two[name], 1),
                "scaling_ratio": round(two[name] / one[name], 2),
            }
            for name, code in THROUGHPUT_PROGRAMS.items()
        },
        "load_average_1m": {"start": load_at_start, "end": os.getloadavg()[0]},
        "latency": {
            "bare_floor": summary(bare),
            "embedded": summary(embedded),
            "redis_path": summary(redis_path),
        },
        "redis_path_added_ms": round(
            statistics.median(redis_path) - statistics.median(embedded), 3
        ),
    }
    out = Path(__file__).parent / "results" / "scaleout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
