"""A real execbox server in a subprocess (uvicorn, real sandbox, real database), and
small helpers for talking to it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kit.host import UidClaim, claim_uids, env_uids, sandbox_pids

STARTUP_LIMIT_S = 60  # a guard against a hang, not a measurement
GONE_LIMIT_S = 10  # likewise
# The key of the servers that require one.
API_KEY = "execbox-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """``execbox serve`` on a free port, with its own data dir."""

    env: dict[str, str]
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="execbox-api-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # The sandbox uids of its own, claimed at its first start unless env names some.
    uids: UidClaim | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self) -> None:
        if "EXECBOX_SANDBOX_UID" not in self.env:
            self.uids = claim_uids()
            self.env = {**self.env, **self.uids.env}
        env = {
            **os.environ,
            "EXECBOX_DATA_DIR": str(self.data_dir),
            "EXECBOX_WORKERS": "2",
            "EXECBOX_SSE_PING_S": "1",
            "EXECBOX_SHUTDOWN_GRACE_S": "2",
            **self.env,
        }
        code = f"from execbox.api.cli import serve; serve(port={self.port})"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=STARTUP_LIMIT_S)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> Iterator[dict[str, Any]]:
        for line in self.log().splitlines():
            if line.startswith("{"):
                yield json.loads(line)


def run(client: httpx.Client, code: str, language: str = "python", **body: Any) -> dict[str, Any]:
    response = client.post("/v1/executions", json={"language": language, "code": code, **body})
    assert response.status_code == 200, response.text
    return response.json()


def submit(client: httpx.Client, code: str, language: str = "python", **body: Any) -> str:
    response = client.post(
        "/v1/executions",
        params={"wait": "false"},
        json={"language": language, "code": code, **body},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_for_status(client: httpx.Client, job_id: str, *statuses: str) -> dict[str, Any]:
    """Follows the job's SSE stream until one of ``statuses`` (or the end)."""
    with client.stream("GET", f"/v1/executions/{job_id}/events") as stream:
        for event in sse_events(stream):
            if event["event"] == "status" and event["data"]["status"] in statuses:
                break
    return client.get(f"/v1/executions/{job_id}").json()


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parses a text/event-stream into {id, event, data} dicts (comments skipped)."""
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            event[key] = value[1:] if value.startswith(" ") else value


def make_server(env: dict[str, str]) -> Iterator[Server]:
    """A started server (for a fixture), stopped and removed afterwards."""
    server = Server(env)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def serve(env: dict[str, str]) -> Iterator[Server]:
    """A server with no warm pools (whose idle sandboxes run as its uids too), so that
    "no program outlives its run" is an exact check even while other test runs share
    the machine."""
    yield from make_server({"EXECBOX_WARM_POOL_SIZE": "0", "EXECBOX_SANDBOX_WARM_POOL": "0", **env})


def no_sandbox_process_left(server: Server) -> bool:
    """Waits (bounded) until no process of the server's sandbox uids runs; True if none."""
    uids = env_uids(server.env)
    deadline = time.monotonic() + GONE_LIMIT_S
    while sandbox_pids(uids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
