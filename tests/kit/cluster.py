"""Scale-out deployments on this machine, for the tests and bench/scaleout.py:
`execbox worker` processes (API processes are kit.servers' Servers) sharing the
machine's PostgreSQL (a schema of their own) and Redis (a database number and key
prefix of their own), and their removal; stopping and starting the machine's Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from kit.databases import PG_URL
from kit.host import UidClaim, claim_uids
from kit.servers import STARTUP_LIMIT_S, Server, free_port

TIMINGS = {"EXECBOX_HEARTBEAT_S": "0.5", "EXECBOX_LEASE_S": "3", "EXECBOX_MAX_ATTEMPTS": "3"}


@dataclass
class Worker:
    """`execbox worker` in a subprocess."""

    env: dict[str, str]
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="execbox-wk-")))
    proc: subprocess.Popen[bytes] | None = None
    uids: UidClaim = field(default_factory=claim_uids)  # its sandboxes' own

    def start(self, concurrency: int) -> None:
        env = {**os.environ, "EXECBOX_DATA_DIR": str(self.data_dir), **self.env, **self.uids.env}
        code = f"from execbox.workers.main import run_worker; run_worker({concurrency})"
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


def live_workers(api_url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api_url}/v1/workers", timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json())


def wait_for_workers(api_url: str, count: int) -> None:
    """Until GET /v1/workers lists ``count`` workers (they register as they start)."""
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while len(live_workers(api_url)) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not register")
        time.sleep(0.1)


class TcpProxy:
    """A local port forwarded to PostgreSQL, to take the database away from one
    process: cut() drops every connection and refuses new ones until resume()."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=STARTUP_LIMIT_S)

    def resume(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)
