"""Other web sites' pages against an execbox on the operator's machine: a
cross-site WebSocket (any page may open one to any host) and DNS rebinding (a page
whose name now points here reads the API). Refused, and nothing runs; the CLI, the
SDK and same-origin pages still work."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from execbox.api.cli import bound_host_patterns
from execbox.api.middleware import trusted_hosts
from execbox.config import Settings
from kit.servers import Server, make_server, run

LISTED = "https://app.example"
CODE = "print('ran')"
HANDSHAKE_LIMIT_S = 30  # a guard against a hang


@pytest.fixture(scope="module")
def listing() -> Iterator[Server]:
    """A keyless server (loopback only) whose CORS list names one site."""
    yield from make_server({"EXECBOX_CORS_ORIGINS": LISTED})


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    """A server with API keys and no allowed hosts: any Host, still no foreign Origin."""
    yield from make_server({"EXECBOX_API_KEYS": "k1"})


def handshake(server: Server, path: str, headers: dict[str, str]) -> int:
    """The HTTP status a WebSocket handshake to ``path`` gets (101: accepted)."""
    fields = {
        "Host": f"127.0.0.1:{server.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANDSHAKE_LIMIT_S) as sock:
        sock.sendall(request.encode() + b"\r\n")
        status_line = sock.makefile("rb").readline()
        status = int(status_line.split()[1])
        if status == 101:  # what a hostile page would send next: a program
            frame = json.dumps({"language": "python", "code": CODE}).encode()
            sock.sendall(_masked_text_frame(frame))
            time.sleep(1)
    return status


def _masked_text_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def executions(server: Server, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{server.url}/v1/executions", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


INTERACTIVE = "/v1/executions/interactive"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a file:// page
        {"Origin": "http://localhost:3000"},  # another local server's page
        {"Origin": "https://evil.example", "Host": "evil.example"},
        {"Origin": "http://evil.example:{port}", "Host": "evil.example:{port}"},  # rebinding
    ],
)
def test_a_cross_site_websocket_is_refused_and_runs_nothing(
    listing: Server, headers: dict[str, str]
) -> None:
    headers = {k: v.format(port=listing.port) for k, v in headers.items()}
    before = executions(listing)
    status = handshake(listing, INTERACTIVE, headers)
    assert (status, executions(listing)) == (403, before)
    assert httpx.get(f"{listing.url}/health", timeout=30).status_code == 200


def test_preview_websockets_check_the_origin_too(listing: Server) -> None:
    path = "/v1/sandboxes/none/ports/8080/socket"
    assert handshake(listing, path, {"Origin": "https://evil.example"}) == 403
    refused = [r for r in listing.log_records() if r.get("event") == "websocket refused"]
    assert any(r["path"] == path and "evil.example" in r["detail"] for r in refused)


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:{port}", LISTED, None], ids=["same", "listed", "none"]
)
def test_same_origin_listed_and_originless_websockets_run(
    listing: Server, origin: str | None
) -> None:
    url = f"ws://127.0.0.1:{listing.port}{INTERACTIVE}"
    with connect(url, origin=origin.format(port=listing.port) if origin else None) as ws:
        ws.send(json.dumps({"language": "python", "code": CODE}))
        messages = [json.loads(message) for message in ws]
    assert messages[-1]["type"] == "result"
    assert messages[-1]["run"]["stdout"] == "ran\n"


def test_a_dns_rebinding_request_gets_400_and_no_data(listing: Server) -> None:
    job = run(httpx.Client(base_url=listing.url, timeout=60), "print('secret output')")
    for host in ("evil.example", f"evil.example:{listing.port}", "127.0.0.1.evil.example"):
        for path in ("/v1/executions", f"/v1/executions/{job['id']}", "/playground/"):
            response = httpx.get(f"{listing.url}{path}", headers={"Host": host}, timeout=30)
            assert response.status_code == 400, (host, path)
            assert response.headers["content-type"] == "application/problem+json"
            assert "EXECBOX_ALLOWED_HOSTS" in response.json()["detail"]
            assert job["id"] not in response.text
    for host in ("localhost", "box.localhost", f"[::1]:{listing.port}", "127.0.0.1"):
        response = httpx.get(f"{listing.url}/v1/executions", headers={"Host": host}, timeout=30)
        assert response.status_code == 200, host


def test_with_api_keys_any_host_answers_but_no_foreign_origin(keyed: Server) -> None:
    response = httpx.get(
        f"{keyed.url}/v1/executions",
        headers={"Host": "execbox.internal", "Authorization": "Bearer k1"},
        timeout=30,
    )
    assert response.status_code == 200
    before = executions(keyed, "k1")
    path = f"{INTERACTIVE}?api_key=k1"
    assert handshake(keyed, path, {"Origin": "https://evil.example"}) == 403
    assert executions(keyed, "k1") == before


def test_trusted_hosts() -> None:
    assert trusted_hosts(Settings()) == ["localhost", "*.localhost", "127.0.0.1", "[::1]"]
    assert trusted_hosts(Settings(api_keys="k")) == ["*"]
    listed = trusted_hosts(Settings(api_keys="k", allowed_hosts="Execbox.Example"), ["*.p.dev"])
    assert listed[-2:] == ["execbox.example", "*.p.dev"]
    assert bound_host_patterns("0.0.0.0") == bound_host_patterns("::") == []
    assert bound_host_patterns("::1") == ["[::1]"]
    assert bound_host_patterns("Box.LAN") == ["box.lan"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_cross_site_form_or_simple_post_runs_nothing(
    listing: Server, content_type: str | None
) -> None:
    """What a foreign page may send without a preflight: no JSON content type."""
    headers = {"Origin": "https://evil.example"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    before = executions(listing)
    body = json.dumps({"language": "python", "code": CODE}).encode()
    response = httpx.post(f"{listing.url}/v1/executions", content=body, headers=headers)
    assert (response.status_code, executions(listing)) == (422, before)
