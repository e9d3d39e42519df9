"""A server with a preview domain, and a hostile app in one of its sandboxes, for the
hostile preview tests (the API suite's and the browser's)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from kit.servers import API_KEY, Server, serve

TESTS = Path(__file__).resolve().parents[1]

PREVIEW_DOMAIN = "preview.localhost"  # Chromium resolves *.localhost to loopback
APP_PORT = 8000
WS_PORT = 4000
APPS = TESTS / "sandboxes" / "apps"
WAIT_LIMIT_S = 20  # a guard against a hang, not a measurement


def serve_previews() -> Iterator[Server]:
    yield from serve({"EXECBOX_API_KEYS": API_KEY, "EXECBOX_PREVIEW_DOMAIN": PREVIEW_DOMAIN})


def preview_host(sandbox_id: str, port: int, server: Server) -> str:
    return f"{port}-{sandbox_id}.{PREVIEW_DOMAIN}:{server.port}"


def wait_until(probe: Any) -> Any:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def start_hostile_app(client: httpx.Client) -> tuple[str, str]:
    """A sandbox running the hostile app on APP_PORT and a WebSocket echo on WS_PORT;
    its id and preview token."""
    created = client.post("/v1/sandboxes", json={"timeout_s": 1800})
    assert created.status_code == 201, created.text
    sid, token = created.json()["id"], created.json()["preview_token"]
    for name in ("hostile_preview.py", "ws_echo.py"):
        client.put(f"/v1/sandboxes/{sid}/files/{name}", content=(APPS / name).read_bytes())
    for cmd in (f"python3 hostile_preview.py {APP_PORT}", f"python3 ws_echo.py {WS_PORT}"):
        body = {"cmd": cmd, "background": True}
        started = client.post(f"/v1/sandboxes/{sid}/commands", json=body)
        assert started.status_code == 202, started.text
    wait_until(lambda: client.get(f"/v1/sandboxes/{sid}/ports/{APP_PORT}/").status_code == 200)
    return sid, token


def reports(client: httpx.Client, sandbox_id: str) -> list[str]:
    """What the hostile page sent back to its sandbox, one report a line."""
    answer = client.get(f"/v1/sandboxes/{sandbox_id}/files/reports.jsonl")
    return answer.text.splitlines() if answer.status_code == 200 else []
