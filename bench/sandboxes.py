"""Persistent sandboxes: create → first command result latency, and memory per idle
sandbox; writes bench/results/sandboxes.json.

Usage (as root): .venv/bin/python bench/sandboxes.py [--iterations N] [--idle N]

Each round measures, in turn, so drift on the machine hits all alike (with a pause
after each, so that warm pools refill as they would between a client's creates):
- bare: spawning /bin/true on the host (the floor);
- session: a new long-lived sandbox (bwrap, namespaces, cgroup, tmpfs) and its
  first command's result (the engine, execbox.engine.session);
- service: the same through the sandbox service (its warm pool of started sessions,
  limits, the SQLite record, the expiry timer, the command's log), as an API request
  does minus HTTP;
- http: POST /v1/sandboxes then POST …/commands to a real `execbox serve` on this
  machine (a subprocess), as a client sees it.
Then ``--idle`` sandboxes are kept alive at once: their memory is read from their
cgroups (what their processes use), the PSS of those processes, and this server
process's own RSS growth per sandbox (its session, pipes and records).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from execbox.benchmark import _bare, _percentile
from execbox.config import get_settings
from execbox.engine import Command, Sandbox
from execbox.engine.session import SessionLimits, command_limits, open_session
from execbox.models import Verdict
from execbox.sandboxes.schemas import CommandCreate, SandboxCreate
from execbox.sandboxes.service import SandboxService
from execbox.store import Database

TRUE = ["/bin/true"]
Cleanup = Callable[[], Awaitable[Any]] | None
PAUSE_S = 0.3  # longer than the service's refill delay and a sandbox start
LIMITS = SessionLimits(memory_bytes=512 << 20, processes=128, disk_mb=256, cpus=1.0)


def _rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))


def _cgroup_memory(dirs: list[Path]) -> int:
    for d in dirs:
        for name in ("memory.current", "memory.usage_in_bytes"):
            if (d / name).exists():
                return int((d / name).read_text())
    return 0


async def _cleanup(cleanup: Cleanup) -> None:
    if cleanup is not None:
        await cleanup()


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 3),
        "p90_ms": round(_percentile(values, 0.9) * 1000, 3),
        "min_ms": round(min(values) * 1000, 3),
    }


async def run(iterations: int, idle: int) -> dict[str, Any]:
    settings = get_settings().model_copy(update={"warm_pool_size": 0})
    engine = Sandbox(settings)
    data = Path(tempfile.mkdtemp(prefix="execbox-bench-"))
    db = Database(f"sqlite+aiosqlite:///{data / 'bench.db'}")
    await db.migrate()
    service = await SandboxService.start(settings, engine, db)
    service.config.max_sandboxes = max(service.config.max_sandboxes, idle + 1)
    limits = command_limits(LIMITS, 10, 1 << 20)

    # Each variant returns its cleanup, which runs outside the measured time (a real
    # client does not wait for a sandbox's end before using it).
    async def bare() -> Cleanup:
        await _bare(TRUE)
        return None

    async def session_first_command() -> Cleanup:
        session = await open_session(engine, LIMITS)
        result = await session.run(Command(TRUE), limits)
        if result.verdict != Verdict.OK:
            raise RuntimeError(f"/bin/true failed in a session: {result}")
        return session.close

    async def service_first_command() -> Cleanup:
        info = await service.create(SandboxCreate())
        done = await service.run_command(info.id, CommandCreate(cmd=TRUE))
        if done.result is None or done.result.verdict != Verdict.OK:
            raise RuntimeError(f"/bin/true failed through the service: {done}")
        return lambda: service.kill(info.id)

    async def http_first_command() -> Cleanup:
        created = (await http.post("/v1/sandboxes", json={})).raise_for_status().json()
        done = await http.post(f"/v1/sandboxes/{created['id']}/commands", json={"cmd": TRUE})
        if done.json()["result"]["verdict"] != Verdict.OK:
            raise RuntimeError(f"/bin/true failed over HTTP: {done.text}")
        return lambda: http.delete(f"/v1/sandboxes/{created['id']}")

    variants: dict[str, Callable[[], Awaitable[Cleanup]]] = {
        "true_bare": bare,
        "create_and_first_command_session": session_first_command,
        "create_and_first_command_service": service_first_command,
        "create_and_first_command_http": http_first_command,
    }
    server, http = await _server(data)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for fn in variants.values():  # warm-up: page cache, the first build of init
            await _cleanup(await fn())
        for _ in range(iterations):
            for name, fn in variants.items():
                started = time.perf_counter()
                cleanup = await fn()
                samples[name].append(time.perf_counter() - started)
                await _cleanup(cleanup)
                # Creates spaced as a client's are: each warm pool refills in between.
                await asyncio.sleep(PAUSE_S)
        memory = await _idle_memory(service, idle)
    finally:
        await http.aclose()
        server.terminate()
        await asyncio.to_thread(server.wait)
        await service.close()
        await db.close()
        await engine.close()
    floor = statistics.median(samples["true_bare"])
    latency = {
        name: {**_stats(values), "ratio_to_bare": round(statistics.median(values) / floor, 2)}
        for name, values in samples.items()
    }
    return {
        "benchmark": "sandboxes",
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            # Other work on the machine skews every figure: say how busy it was.
            "loadavg": [round(load, 2) for load in os.getloadavg()],
        },
        "cgroup_version": engine.cgroups.version,
        "iterations": iterations,
        "latency": latency,
        "idle_memory": memory,
        "target": "create + first command p50 <= 20 ms (E2B publishes ~150 ms for a start)",
    }


async def _server(data: Path) -> tuple[subprocess.Popen[bytes], httpx.AsyncClient]:
    """``execbox serve`` on a free port, with its own data dir, and a client of it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "EXECBOX_DATA_DIR": str(data / "server"), "EXECBOX_LOG_LEVEL": "warning"}
    code = f"from execbox.api.cli import serve; serve(port={port})"
    server = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the server runs on its own
        [sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL
    )
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
    for _ in range(600):  # a guard against a server that never starts
        try:
            if (await http.get("/openapi.json")).status_code == 200:
                return server, http
        except httpx.TransportError:
            await asyncio.sleep(0.05)
    server.kill()
    raise RuntimeError("execbox serve did not start")


async def _idle_memory(service: SandboxService, count: int) -> dict[str, Any]:
    rss_before = _rss_kb()
    ids = [(await service.create(SandboxCreate())).id for _ in range(count)]
    await asyncio.sleep(0.5)  # let the started processes settle before reading memory
    lives = [service.find_live(i) for i in ids]
    cgroup_bytes = [_cgroup_memory(live.session.cgroup.dirs) for live in lives if live]
    pss_kb = [sum(_pss_kb(p) for p in live.session.cgroup.pids()) for live in lives if live]
    rss_growth_kb = (_rss_kb() - rss_before) / count
    for sandbox_id in ids:
        await service.kill(sandbox_id)
    return {
        "idle_sandboxes": count,
        "cgroup_memory_kb_per_sandbox": round(statistics.mean(cgroup_bytes) / 1024, 1),
        "processes_pss_kb_per_sandbox": round(statistics.mean(pss_kb), 1),
        "server_rss_kb_per_sandbox": round(rss_growth_kb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--idle", type=int, default=20)
    args = parser.parse_args()
    report = asyncio.run(run(args.iterations, args.idle))
    print(json.dumps(report, indent=2))
    out = Path(__file__).parent / "results" / "sandboxes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
