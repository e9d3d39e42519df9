"""API keys, the bounded queue, the body cap, CORS and the bind guard."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from execbox.api.cli import check_bind
from execbox.config import Settings
from kit.servers import Server, submit, wait_for_status

KEY = "test-key-1"
ORIGIN = "https://playground.example"


@pytest.fixture(scope="module")
def guarded(backend: dict[str, str]) -> Iterator[Server]:
    server = Server(
        {
            **backend,
            "EXECBOX_API_KEYS": f"other-key, {KEY}",
            "EXECBOX_WORKERS": "1",
            "EXECBOX_QUEUE_SIZE": "1",
            "EXECBOX_MAX_BODY_KB": "16",
            "EXECBOX_CORS_ORIGINS": ORIGIN,
        }
    )
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.data_dir, ignore_errors=True)


def test_api_keys(guarded: Server) -> None:
    body = {"language": "python", "code": "print(1)"}
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        refused = client.post("/v1/executions", json=body)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in refused.json()["detail"]
        wrong = client.get("/v1/languages", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        bearer = client.post(
            "/v1/executions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert bearer.json()["run"]["stdout"] == "1\n"
        header = client.get("/v1/languages", headers={"X-API-Key": KEY})
        assert header.status_code == 200
        assert client.get("/health").status_code == 200  # probes need no key


def test_full_queue_answers_429_and_queued_jobs_cancel_at_once(guarded: Server) -> None:
    headers = {"X-API-Key": KEY}
    with httpx.Client(base_url=guarded.url, timeout=60, headers=headers) as client:
        running = submit(client, "import time\nprint('go', flush=True)\ntime.sleep(60)")
        wait_for_status(client, running, "running")
        queued = submit(client, "print('never')")  # one worker busy: this one waits
        full = client.post(
            "/v1/executions", params={"wait": "false"}, json={"language": "python", "code": "1"}
        )
        assert full.status_code == 429
        assert full.headers["retry-after"].isdigit()
        assert full.headers["content-type"] == "application/problem+json"

        assert client.post(f"/v1/executions/{queued}/cancel").json()["status"] == "cancelled"
        assert client.post(f"/v1/executions/{running}/cancel").json()["status"] == "cancelled"
        statuses = [
            e["status"] for e in client.get(f"/v1/executions/{queued}/activity").json()["events"]
        ]
        assert statuses == ["queued", "cancelled"]


def test_body_cap(guarded: Server) -> None:
    big = {"language": "python", "code": "#" * 20_000}
    with httpx.Client(base_url=guarded.url, timeout=60, headers={"X-API-Key": KEY}) as client:
        response = client.post("/v1/executions", json=big)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"language": "python", "code": "'
            for _ in range(40):
                yield b"#" * 1000
            yield b'"}'

        chunked = client.post(
            "/v1/executions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413


def test_cors(guarded: Server) -> None:
    preflight = httpx.options(
        f"{guarded.url}/v1/executions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(f"{guarded.url}/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_open_api_binds_only_to_loopback() -> None:
    open_settings = Settings(api_keys=None, allow_insecure=False)
    check_bind("127.0.0.1", open_settings, allow_insecure=False)
    check_bind("::1", open_settings, allow_insecure=False)
    with pytest.raises(SystemExit, match="EXECBOX_API_KEYS"):
        check_bind("0.0.0.0", open_settings, allow_insecure=False)
    check_bind("0.0.0.0", open_settings, allow_insecure=True)
    check_bind("0.0.0.0", Settings(api_keys="k"), allow_insecure=False)
    check_bind("0.0.0.0", Settings(allow_insecure=True), allow_insecure=False)
