"""Persistent sandboxes of two tenants (issue 19, item 5): each runs as a host uid of
its own, so one that uses up what the kernel counts per user (inotify instances, pipe
buffer pages, queued signals) takes nothing from another; and when every uid of the
range is in use, a new sandbox is refused with a 503, never given a uid in use."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from execbox.config import Settings
from execbox.engine import Sandbox
from execbox.engine.session import SessionLimits, open_session
from execbox.engine.uids import CLAIMS_DIR
from kit.host import (
    PER_USER_HOG,
    PER_USER_PROBE,
    PER_USER_PROBE_OK,
    claim_uids,
    sandbox_pids,
    settings_uids,
)
from kit.servers import API_KEY, Server, make_server

WAIT_LIMIT_S = 30  # a guard against a hang, not a measurement
SMALL = SessionLimits(memory_bytes=64 << 20, processes=16, disk_mb=4)


def wait_for(probe: Callable[[], Any]) -> Any:
    """Polls until probe() returns something truthy."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not (found := probe()):
        assert time.monotonic() < deadline, "waited too long"
        time.sleep(0.05)
    return found


def create(client: httpx.Client) -> str:
    response = client.post("/v1/sandboxes", json={"timeout_s": 120})
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["id"]
    return sandbox_id


def command(client: httpx.Client, sid: str, cmd: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": cmd, **body})
    assert response.status_code in (200, 202), response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_sandbox_that_exhausts_per_user_limits_leaves_another_its_own(
    client: httpx.Client,
) -> None:
    hog, probe = create(client), create(client)
    client.put(f"/v1/sandboxes/{hog}/files/hog.py", content=PER_USER_HOG.encode())
    # In the background, its stdin open: it holds everything until the sandbox ends.
    command(client, hog, "python3 hog.py > used.json", background=True)

    def report() -> dict[str, Any] | None:
        got = client.get(f"/v1/sandboxes/{hog}/files/used.json")
        return json.loads(got.content) if got.status_code == 200 and got.content else None

    used = wait_for(report)
    assert used["inotify_errno"] == 24 and used["new_pipe_size"] == 8192, used
    assert used["sigqueue_errno"] == 11, used

    client.put(f"/v1/sandboxes/{probe}/files/probe.py", content=PER_USER_PROBE.encode())
    result = command(client, probe, "python3 probe.py")["result"]
    assert result["exit_code"] == 0, result
    assert json.loads(result["stdout"]) == PER_USER_PROBE_OK


@pytest.fixture
def two_uid_server() -> Iterator[Server]:
    """A server whose sandboxes may use two uids only (no warm pools to take them)."""
    uids = claim_uids()
    try:
        yield from make_server(
            {
                **uids.env,
                "EXECBOX_SANDBOX_UID_COUNT": "2",
                "EXECBOX_WARM_POOL_SIZE": "0",
                "EXECBOX_SANDBOX_WARM_POOL": "0",
                "EXECBOX_WORKERS": "1",
                "EXECBOX_API_KEYS": API_KEY,
            }
        )
    finally:
        uids.release()


def test_when_every_uid_is_in_use_a_new_sandbox_gets_a_503(two_uid_server: Server) -> None:
    warned = [r for r in two_uid_server.log_records() if "fewer sandbox uids" in r["event"]]
    assert warned and warned[0]["uids"] == 2, "the server did not warn at start"
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=two_uid_server.url, timeout=60, headers=headers) as client:
        first, _ = create(client), create(client)
        refused = client.post("/v1/sandboxes", json={})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "10"
        problem = refused.json()
        assert "all 2 sandbox uids" in problem["detail"], problem
        assert "EXECBOX_SANDBOX_UID_COUNT" in problem["detail"], problem
        # Executions need a uid too: the health check says why none can run now.
        health = client.get("/health").json()
        assert "all 2 sandbox uids" in health["checks"]["sandbox"], health
        # A sandbox that ended gives its uid back.
        assert client.delete(f"/v1/sandboxes/{first}").status_code == 200
        again = create(client)
        assert command(client, again, "echo hi")["result"]["stdout"] == "hi\n"
        for info in client.get("/v1/sandboxes", params={"status": "running"}).json():
            client.delete(f"/v1/sandboxes/{info['id']}")
        # With the uids back, executions run again (the health check's result is cached
        # for a few seconds).
        wait_for(lambda: client.get("/health").status_code == 200)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_start_cancelled_anywhere_leaves_no_uid_pty_or_process(
    engine: Sandbox, settings: Settings
) -> None:
    """A warm pool's fill is cancelled when the server stops, at any point of a start."""
    uids = settings_uids(settings)
    for delay_s in (0, 0.001, 0.003, 0.01, 0.03, 0.1):
        starting = asyncio.create_task(open_session(engine, SMALL))
        await asyncio.sleep(delay_s)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await (await starting).close()  # it was done already: close it
        claimed = [p.name for p in CLAIMS_DIR.iterdir() if int(p.name) in uids]
        assert claimed == [], (delay_s, claimed)
        assert list(settings.ptys_dir.iterdir()) == [], delay_s
        assert list(settings.workspaces_dir.iterdir()) == [], delay_s
        assert await no_process_of(uids), delay_s


async def no_process_of(uids: range) -> bool:
    """Waits (bounded) until no process runs as one of ``uids``; True if none does."""
    for _ in range(WAIT_LIMIT_S * 20):
        if not sandbox_pids(uids):
            return True
        await asyncio.sleep(0.05)
    return False
