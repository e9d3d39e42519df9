"""Webhooks delivered to a local receiver, retried when it fails."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from execbox.webhooks import CallbackPolicy, CallbackUrlError
from kit.servers import Server, submit

SECRET = "s3cret"


class Receiver:
    """Answers 500 to the first POST of each job, 200 after; records what it got."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[int, dict[str, str], dict[str, Any]]] = queue.Queue()
        self.seen: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                result = json.loads(body)
                status = 200 if result["id"] in receiver.seen else 500
                receiver.seen.add(result["id"])
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers["body-hmac"] = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                receiver.received.put((status, headers, result))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/hook"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.http.shutdown()


@pytest.fixture(scope="module")
def hook_server(receiver: Receiver) -> Iterator[Server]:
    server = Server(
        {
            "EXECBOX_WEBHOOK_BACKOFF_S": "0.05",
            "EXECBOX_WEBHOOK_SECRET": SECRET,
            # The receiver is on loopback, which callbacks reach only when allowed.
            "EXECBOX_WEBHOOK_INTERNAL_HOSTS": "127.0.0.1",
        }
    )
    server.start()
    yield server
    server.stop()


def test_final_result_is_posted_with_retries(hook_server: Server, receiver: Receiver) -> None:
    with httpx.Client(base_url=hook_server.url, timeout=60) as client:
        job_id = submit(client, "print('hooked')", callback_url=receiver.url)
        first = receiver.received.get(timeout=60)
        second = receiver.received.get(timeout=60)
    assert [first[0], second[0]] == [500, 200]
    _, headers, result = second
    assert result["id"] == job_id
    assert result["status"] == "completed"
    assert result["run"]["stdout"] == "hooked\n"
    assert headers["x-execbox-event"] == "execution.finished"
    assert headers["x-execbox-signature"] == f"sha256={headers['body-hmac']}"


def test_callback_urls_are_checked() -> None:
    CallbackPolicy().check_url("https://hooks.example.com/x")
    CallbackPolicy(("*.hooks.example.com",)).check_url("https://a.hooks.example.com/x")
    for url, allowed in [
        ("ftp://example.com/", []),
        ("file:///etc/passwd", []),
        ("http:///nohost", []),
        ("http://example.com:99999/", []),
        ("https://evil.com/", ["hooks.example.com"]),
        ("https://hooks.example.com.evil.com/", ["*.example.com", "hooks.example.com"]),
    ]:
        with pytest.raises(CallbackUrlError):
            CallbackPolicy(tuple(allowed)).check_url(url)
