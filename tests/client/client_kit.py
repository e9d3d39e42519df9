"""A real execbox server for the client and playground suites: the API suite's
``Server`` (uvicorn subprocess, real sandbox, temp data dir), with a sandbox uid of
its own and no warm pool (whose idle sandboxes run as that uid too), so that "no
program outlives its run" is an exact check."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "api"), str(TESTS / "engine")]

from api_kit import Server  # noqa: E402
from engine_kit import sandbox_pids  # noqa: E402

CLIENT_UID = 60178
API_KEY = "client-suite-key"
GONE_LIMIT_S = 10  # a guard against a hang, not a measurement

__all__ = ["API_KEY", "CLIENT_UID", "Server", "no_sandbox_process_left", "serve"]


def serve(env: dict[str, str]) -> Iterator[Server]:
    server = Server(
        {
            "EXECBOX_SANDBOX_UID": str(CLIENT_UID),
            "EXECBOX_SANDBOX_GID": str(CLIENT_UID),
            "EXECBOX_WARM_POOL_SIZE": "0",
            **env,
        }
    )
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def no_sandbox_process_left() -> bool:
    """Waits (bounded) until no process of the suite's sandbox uid runs; True if none."""
    deadline = time.monotonic() + GONE_LIMIT_S
    while sandbox_pids(CLIENT_UID):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
