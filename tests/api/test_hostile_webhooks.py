"""Callbacks aimed at the server's own loopback or private network (SSRF): refused
when submitted if the URL says so, refused at delivery once the name is resolved,
and delivered only to the address that was checked (no DNS rebinding)."""

from __future__ import annotations

import queue
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from execbox.config import Settings
from execbox.metrics import Metrics
from execbox.models import ExecutionResult, LanguageRef, Status
from execbox.webhooks import CallbackPolicy, CheckedBackend, IPAddress, Webhooks, resolve
from kit.servers import Server, submit, wait_for_status

PUBLIC = "93.184.215.14"  # what the rebinding name first answers: public, never reached


class Listener:
    """An HTTP server on ``address`` that records the paths POSTed to it."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.posts: queue.Queue[str] = queue.Queue()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                posts.put(self.path)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server_class = type(
            "Server",
            (ThreadingHTTPServer,),
            {"address_family": socket.AF_INET6 if ":" in address else socket.AF_INET},
        )
        self.http = server_class((address, port), Handler)
        self.port: int = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def received(self) -> list[str]:
        return list(self.posts.queue)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    """One port, listened on at 127.0.0.1, 127.0.0.2 and ::1."""
    first = Listener("127.0.0.1")
    opened = [first, Listener("127.0.0.2", first.port), Listener("::1", first.port)]
    yield opened
    for listener in opened:
        listener.close()


def _result() -> ExecutionResult:
    return ExecutionResult(id="job", status=Status.COMPLETED, language=LanguageRef(name="python"))


async def _deliver(webhooks: Webhooks, url: str) -> None:
    webhooks.send(url, _result())
    await webhooks.close(grace_s=30)


def _outcomes(metrics: Metrics) -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for metric in metrics.webhooks.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


LOOPBACK_SPELLINGS = [
    "localhost",
    "hooks.localhost",
    "LOCALHOST.",
    "127.0.0.1",
    "127.0.0.2",
    "127.1",
    "2130706433",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "0.0.0.0",
    "[::1]",
    "[::]",
    "[::ffff:127.0.0.1]",
    "[64:ff9b::7f00:1]",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_loopback_receives_no_callback_by_default(
    listeners: list[Listener], host: str
) -> None:
    metrics = Metrics()
    webhooks = Webhooks(Settings(webhook_backoff_s=0), metrics)
    await _deliver(webhooks, f"http://{host}:{listeners[0].port}/internal-admin")
    assert [listener.received() for listener in listeners] == [[], [], []]
    assert _outcomes(metrics) == {"refused": 1}


async def test_allowed_internal_hosts_receive_callbacks(listeners: list[Listener]) -> None:
    settings = Settings(webhook_internal_hosts="localhost,127.0.0.2,[::1]")
    webhooks = Webhooks(settings, Metrics())
    port = listeners[0].port
    for url in (f"http://localhost:{port}/a", f"http://127.0.0.2:{port}/b"):
        webhooks.send(url, _result())
    webhooks.send(f"http://[::1]:{port}/c", _result())
    webhooks.send(f"http://127.0.0.1:{port}/refused", _result())  # not in the list
    await webhooks.close(grace_s=30)
    assert [sorted(listener.received()) for listener in listeners] == [["/a"], ["/b"], ["/c"]]


class Rebinding:
    """A resolver that answers a public address first and loopback afterwards."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls += 1
        return await resolve(PUBLIC if self.calls == 1 else "127.0.0.1", port)


class Recording(httpcore.AsyncNetworkBackend):
    """The real backend, recording where it is asked to connect; the public
    address is unreachable from a test, so it fails like a down receiver."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.targets: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.targets.append(host)
        if host == PUBLIC:
            raise httpcore.ConnectError("unreachable in a test")
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)


async def test_delivery_connects_to_the_address_it_checked(listeners: list[Listener]) -> None:
    resolver, recording = Rebinding(), Recording()
    metrics = Metrics()
    backend = CheckedBackend(CallbackPolicy(), resolver, recording)
    webhooks = Webhooks(Settings(webhook_attempts=2, webhook_backoff_s=0), metrics, backend)
    await _deliver(webhooks, f"http://rebind.example:{listeners[0].port}/internal-admin")
    # Attempt 1 resolved once and connected to that (public) answer; attempt 2's
    # answer was loopback, refused before any connection.
    assert recording.targets == [PUBLIC]
    assert resolver.calls == 2
    assert listeners[0].received() == []
    assert _outcomes(metrics) == {"refused": 1}


async def test_a_name_with_one_internal_address_is_refused(listeners: list[Listener]) -> None:
    async def mixed(host: str, port: int) -> list[IPAddress]:
        return [*await resolve(PUBLIC, port), *await resolve("127.0.0.1", port)]

    recording = Recording()
    webhooks = Webhooks(Settings(), Metrics(), CheckedBackend(CallbackPolicy(), mixed, recording))
    await _deliver(webhooks, f"http://mixed.example:{listeners[0].port}/")
    assert recording.targets == []
    assert listeners[0].received() == []


def test_literal_internal_addresses_are_refused_when_submitted(client: httpx.Client) -> None:
    urls = [f"http://{host}:9911/internal-admin" for host in LOOPBACK_SPELLINGS] + [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://224.0.0.1/",
        "http://[fe80::1]/",
    ]
    for url in urls:
        response = client.post(
            "/v1/executions", json={"language": "python", "code": "print(1)", "callback_url": url}
        )
        assert response.status_code == 422, (url, response.text)
        assert response.json()["detail"].startswith("callback_url"), url
    detail = client.post(
        "/v1/executions",
        json={"language": "python", "code": "print(1)", "callback_url": urls[3]},
    ).json()["detail"]
    assert detail == (
        "callback_url host '127.0.0.1' is a loopback address (127.0.0.1): callbacks go to "
        "public addresses only, unless the server's admin lists the host in "
        "EXECBOX_WEBHOOK_INTERNAL_HOSTS"
    )
    assert client.get("/health").status_code == 200


def test_a_name_of_this_machine_is_refused_at_delivery() -> None:
    """Through the server: a name that is no literal but resolves to this machine
    passes submission, and is refused once resolved."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, socket.AF_INET)}
    except socket.gaierror:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    listener = Listener("0.0.0.0")  # any address of this machine
    server = Server({"EXECBOX_WEBHOOK_BACKOFF_S": "0"})
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            job_id = submit(
                client, "print('secret')", callback_url=f"http://{name}:{listener.port}/"
            )
            assert wait_for_status(client, job_id, "completed")["status"] == "completed"
            refused = _wait_for_log(server, "webhook refused")
        assert listener.received() == []
        assert any(address in refused["problem"] for address in addresses)
    finally:
        server.stop()
        listener.close()


def _wait_for_log(server: Server, event: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30  # a guard against a hang
    while time.monotonic() < deadline:
        for record in server.log_records():
            if record.get("event") == event:
                return record
        time.sleep(0.1)
    raise AssertionError(f"no {event!r} in the server log:\n{server.log()}")


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate (and its key) for hooks.example that no one has signed."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=hooks.example", "-addext", "subjectAltName=DNS:hooks.example"]
    subprocess.run(
        ["openssl", *request, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_is_verified_against_the_name_not_the_address(
    self_signed: tuple[Path, Path],
) -> None:
    """The connection goes to the checked address, yet SNI names the host and the
    certificate is verified: a self-signed one for that very name is refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    listener = Listener("127.0.0.1")
    listener.http.socket = context.wrap_socket(listener.http.socket, server_side=True)

    async def to_loopback(host: str, port: int) -> list[IPAddress]:
        return await resolve("127.0.0.1", port)

    metrics = Metrics()
    policy = CallbackPolicy(internal_hosts=("hooks.example",))
    backend = CheckedBackend(policy, to_loopback)
    webhooks = Webhooks(Settings(webhook_attempts=1), metrics, backend)
    try:
        await _deliver(webhooks, f"https://hooks.example:{listener.port}/")
    finally:
        listener.close()
    assert names == ["hooks.example"]
    assert listener.received() == []
    assert _outcomes(metrics) == {"failed": 1}
