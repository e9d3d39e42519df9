"""A real execbox server for the client and playground suites: the API suite's
``Server`` (uvicorn subprocess, real sandbox, temp data dir, sandbox uids no other test
runner or server uses) with no warm pools (whose idle sandboxes and sessions run as
those uids too), so that "no program outlives its run" is an exact check even while
other test runs share the machine."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "api"), str(TESTS / "engine")]

from api_kit import Server  # noqa: E402
from engine_kit import env_uids, sandbox_pids  # noqa: E402

API_KEY = "client-suite-key"
GONE_LIMIT_S = 10  # a guard against a hang, not a measurement

__all__ = ["API_KEY", "Server", "no_sandbox_process_left", "serve"]


def serve(env: dict[str, str]) -> Iterator[Server]:
    server = Server(
        {
            "EXECBOX_WARM_POOL_SIZE": "0",
            "EXECBOX_SANDBOX_WARM_POOL": "0",
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


def no_sandbox_process_left(server: Server) -> bool:
    """Waits (bounded) until no process of the server's sandbox uids runs; True if none."""
    uids = env_uids(server.env)
    deadline = time.monotonic() + GONE_LIMIT_S
    while sandbox_pids(uids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
