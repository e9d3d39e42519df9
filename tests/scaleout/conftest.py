"""A real scale-out deployment on this machine: two `execbox serve` and two `execbox
worker` processes sharing the machine's PostgreSQL (a schema of their own) and Redis
(a database number and key prefix of their own), all removed afterwards.

Skipped, saying why, only when PostgreSQL or Redis is not reachable (CI starts both).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

# The API suite's real-server helpers (uvicorn subprocess, SSE parsing) serve here too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))
from api_kit import PG_URL, STARTUP_LIMIT_S, Server

REDIS_DB = 11
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
# How this machine's Redis was started (no persistence: a restart loses every key).
REDIS_SERVER = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip
# Short heartbeats and leases, so a killed worker's jobs come back within seconds.
TIMINGS = {"EXECBOX_HEARTBEAT_S": "0.5", "EXECBOX_LEASE_S": "3", "EXECBOX_MAX_ATTEMPTS": "3"}


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def stop_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False)
    while _reachable(6379):
        time.sleep(0.05)


def start_redis() -> None:
    """Starts the machine's Redis as it was started, unless it is running."""
    if not redis_up():
        subprocess.run(REDIS_SERVER, check=True)
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while not redis_up():
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not come back")
        time.sleep(0.05)


@dataclass
class Worker:
    """`execbox worker` in a subprocess."""

    env: dict[str, str]
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="execbox-wk-")))
    proc: subprocess.Popen[bytes] | None = None

    def start(self, concurrency: int) -> None:
        env = {**os.environ, "EXECBOX_DATA_DIR": str(self.data_dir), **self.env}
        code = f"from execbox.worker_cli import run_worker; run_worker({concurrency})"
        with open(self.data_dir / "worker.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=STARTUP_LIMIT_S)
            self.proc = None


@dataclass
class Cluster:
    env: dict[str, str]
    schema: str
    apis: list[Server] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def add_worker(self, concurrency: int = 2) -> Worker:
        worker = Worker(self.env)
        worker.start(concurrency)
        self.workers.append(worker)
        return worker

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
        try:
            await conn.execute(f'SET search_path TO "{self.schema}"')
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()


def _drop(schema: str, prefix: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"saq:{prefix}:*", f"saq:job:{prefix}:*", f"{prefix}:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    if not _reachable(5432):
        pytest.skip("scale-out tests need PostgreSQL at 127.0.0.1:5432 (db `test`, trust auth)")
    if not redis_up():
        pytest.skip("scale-out tests need Redis at 127.0.0.1:6379")
    suffix = secrets.token_hex(4)
    schema, prefix = f"execbox_scaleout_{suffix}", f"execbox-test-{suffix}"
    env = {
        "EXECBOX_DATABASE_URL": PG_URL,
        "EXECBOX_DATABASE_SCHEMA": schema,
        "EXECBOX_REDIS_URL": REDIS_URL,
        "EXECBOX_REDIS_PREFIX": prefix,
        "EXECBOX_SHUTDOWN_GRACE_S": "2",
        "EXECBOX_QUEUE_SIZE": "5000",
        **TIMINGS,
    }
    cluster = Cluster(env, schema)
    try:
        for _ in range(2):
            cluster.add_worker()
        cluster.apis = [Server(env), Server(env)]
        with ThreadPoolExecutor() as starting:  # each takes seconds (language probes)
            list(starting.map(Server.start, cluster.apis))
        yield cluster
    finally:
        start_redis()  # whatever a test did to it
        for process in [*cluster.apis, *cluster.workers]:
            if process.proc is not None:
                process.stop()
            shutil.rmtree(process.data_dir, ignore_errors=True)
        _drop(schema, prefix)
