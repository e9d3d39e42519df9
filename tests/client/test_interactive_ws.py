"""WS /v1/executions/interactive at the protocol level (plain websockets, JSON messages)
against a real server: echo, live streaming, kill, disconnect, errors, persistence."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from execbox.api.interactive import MESSAGE_OVERHEAD, _Outbox
from kit.servers import API_KEY, Server, no_sandbox_process_left, serve

# Each line is one write, so that it leaves the program as one chunk (print() with
# several arguments writes them one by one, unbuffered).
ECHO = """
import sys
for line in sys.stdin:
    sys.stdout.write(f"echo: {line.strip()}\\n")
sys.stdout.write("bye\\n")
"""

TICKS = """
import sys, time
for i in range(4):
    sys.stdout.write(f"tick {i}\\n")
    time.sleep(0.3)
"""

FOREVER = """
import sys, time
sys.stdout.write("started\\n")
while True:
    time.sleep(0.1)
"""


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/executions/interactive"


@pytest.fixture
def ws(server: Server) -> Iterator[ClientConnection]:
    with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        yield ws


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        yield client


def start(ws: ClientConnection, code: str, **body: Any) -> str:
    """Sends the request; returns the job id from the first status message."""
    ws.send(json.dumps({"language": "python", "code": code, **body}))
    first = receive(ws)
    assert first["type"] == "status" and first["status"] == "running", first
    return str(first["id"])


def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=30))
    return message


def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Messages up to and including the first of ``kind``."""
    seen = []
    while True:
        seen.append(receive(ws))
        if seen[-1]["type"] == kind:
            return seen


def output(messages: list[dict[str, Any]], kind: str = "stdout") -> str:
    return "".join(m["data"] for m in messages if m["type"] == kind)


def test_echo_answers_each_line_as_sent_and_the_job_is_persisted(
    ws: ClientConnection, http: httpx.Client
) -> None:
    job_id = start(ws, ECHO)
    for word in ("one", "two", "three"):
        ws.send(json.dumps({"type": "stdin", "data": f"{word}\n"}))
        # The answer comes while stdin is still open: the program reads it live.
        assert output(until(ws, "stdout")) == f"echo: {word}\n"
    ws.send(json.dumps({"type": "close_stdin"}))
    messages = until(ws, "result")
    result = messages[-1]
    assert output(messages) == "bye\n"
    assert result["status"] == "completed" and result["verdict"] == "ok"
    assert result["run"]["stdout"] == "echo: one\necho: two\necho: three\nbye\n"

    stored = http.get(f"/v1/executions/{job_id}").json()
    assert stored["status"] == "completed" and stored["run"]["stdout"] == result["run"]["stdout"]
    activity = http.get(f"/v1/executions/{job_id}/activity").json()["events"]
    statuses = [e["status"] for e in activity if e["type"] == "status"]
    assert statuses == ["queued", "running", "completed"]
    assert {"type": "stage", "stage": "running"}.items() <= activity[2].items()


def test_lines_arrive_one_by_one_as_printed(ws: ClientConnection) -> None:
    start(ws, TICKS)
    messages = until(ws, "result")
    lines = [m["data"] for m in messages if m["type"] == "stdout"]
    # One message per printed line, all before the result: streamed, not batched at the end.
    assert lines == [f"tick {i}\n" for i in range(4)]
    assert messages[-1]["verdict"] == "ok"


def test_stdin_of_the_request_comes_first(ws: ClientConnection) -> None:
    start(ws, ECHO, stdin="given\n")
    assert output(until(ws, "stdout")) == "echo: given\n"
    ws.send(json.dumps({"type": "close_stdin"}))
    assert until(ws, "result")[-1]["run"]["stdout"] == "echo: given\nbye\n"


def test_kill_ends_the_run_at_once(
    server: Server, ws: ClientConnection, http: httpx.Client
) -> None:
    job_id = start(ws, FOREVER)
    assert output(until(ws, "stdout")) == "started\n"
    ws.send(json.dumps({"type": "kill"}))
    result = until(ws, "result")[-1]
    assert result["status"] == "cancelled" and result["id"] == job_id
    assert http.get(f"/v1/executions/{job_id}").json()["status"] == "cancelled"
    assert no_sandbox_process_left(server)


def test_a_kill_sent_with_the_request_still_ends_the_job_cancelled(
    server: Server, ws: ClientConnection, http: httpx.Client
) -> None:
    ws.send(json.dumps({"language": "python", "code": FOREVER}))
    ws.send(json.dumps({"type": "kill"}))  # before the sandbox may even have started
    result = until(ws, "result")[-1]
    assert result["status"] == "cancelled"
    assert http.get(f"/v1/executions/{result['id']}").json()["status"] == "cancelled"
    assert no_sandbox_process_left(server)


def test_client_disconnect_kills_the_run(server: Server, http: httpx.Client) -> None:
    headers = {"X-API-Key": API_KEY}
    with connect(ws_url(server), additional_headers=headers) as ws:
        job_id = start(ws, FOREVER)
        assert output(until(ws, "stdout")) == "started\n"
    events = http.get(f"/v1/executions/{job_id}/events", timeout=30).text
    assert "event: result" in events
    assert http.get(f"/v1/executions/{job_id}").json()["status"] == "cancelled"
    assert no_sandbox_process_left(server)


def test_cancel_through_the_http_api_reaches_an_interactive_run(
    ws: ClientConnection, http: httpx.Client
) -> None:
    job_id = start(ws, FOREVER)
    until(ws, "stdout")
    assert http.post(f"/v1/executions/{job_id}/cancel").json()["status"] == "cancelled"
    assert until(ws, "result")[-1]["status"] == "cancelled"


def test_limits_apply(ws: ClientConnection) -> None:
    start(ws, FOREVER, limits={"wall_time_s": 1})
    result = until(ws, "result")[-1]
    assert result["status"] == "completed" and result["verdict"] == "time_limit"


@pytest.mark.parametrize(
    ("request_body", "status"),
    [
        ({"language": "cobol", "code": "x"}, 422),
        ({"language": "python"}, 422),
        ({"language": "python", "code": "1", "limits": {"wall_time_s": 10**6}}, 422),
    ],
)
def test_a_bad_request_is_a_problem_then_a_close(
    ws: ClientConnection, request_body: dict[str, Any], status: int
) -> None:
    ws.send(json.dumps(request_body))
    problem = receive(ws)
    assert problem["type"] == "error" and problem["status"] == status and problem["detail"]
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000 + status


def test_an_api_key_is_required(server: Server) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"language": "python", "code": "print(1)"}))
        problem = receive(ws)
    assert problem["type"] == "error" and problem["status"] == 401
    with connect(f"{ws_url(server)}?api_key={API_KEY}") as ws:
        start(ws, "print(1)")
        assert until(ws, "result")[-1]["verdict"] == "ok"


def test_an_unknown_client_message_is_answered_and_the_run_goes_on(ws: ClientConnection) -> None:
    start(ws, ECHO)
    ws.send(json.dumps({"type": "resize"}))
    assert "unknown message" in until(ws, "error")[-1]["detail"]
    ws.send("[" * 100_000 + "]" * 100_000)  # nested deeper than the parser recurses
    assert "JSON objects" in until(ws, "error")[-1]["detail"]
    ws.send(json.dumps({"type": "stdin", "data": "still read\n"}))
    assert until(ws, "stdout")[-1]["data"] == "echo: still read\n"
    ws.send(json.dumps({"type": "close_stdin"}))
    assert until(ws, "result")[-1]["verdict"] == "ok"


async def test_a_slow_reader_loses_live_output_beyond_the_cap_not_server_memory() -> None:
    outbox = _Outbox(limit=MESSAGE_OVERHEAD + 10)
    outbox.output("stdout", "run", b"12345678")
    outbox.output("stdout", "run", b"abcdef")  # over the cap while the first is unsent
    assert await outbox.get() == {"type": "stdout", "stage": "run", "data": "12345678"}
    outbox.output("stdout", "run", b"more")  # sent ones free the room again
    assert await outbox.get() == {"type": "stdout", "stage": "run", "data": "more", "dropped": 6}


async def test_one_byte_writes_to_a_slow_reader_are_merged_and_counted_with_overhead() -> None:
    outbox = _Outbox(limit=2 * MESSAGE_OVERHEAD + 1001)  # room for two messages, 1001 bytes
    for _ in range(1000):
        outbox.output("stdout", "run", b"x")  # merged while waiting: one message
    outbox.output("stderr", "run", b"e")
    outbox.output("stdout", "run", b"y")  # a third message would pass the budget
    assert await outbox.get() == {"type": "stdout", "stage": "run", "data": "x" * 1000}
    assert await outbox.get() == {"type": "stderr", "stage": "run", "data": "e"}
    outbox.output("stdout", "run", b"z")
    assert await outbox.get() == {"type": "stdout", "stage": "run", "data": "z", "dropped": 1}


@pytest.fixture
def own_server() -> Iterator[Server]:
    """A server of its own: the test below may leave one broken."""
    yield from serve({})


def test_runs_killed_as_they_start_leave_the_server_sound(own_server: Server) -> None:
    for _ in range(3):
        with connect(ws_url(own_server)) as ws:
            start(ws, FOREVER)  # and the client leaves at once, as the box starts
    with connect(ws_url(own_server)) as ws:
        start(ws, ECHO)
        ws.send(json.dumps({"type": "close_stdin"}))
        assert until(ws, "result")[-1]["verdict"] == "ok"
    assert no_sandbox_process_left(own_server)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_stdin_a_program_never_reads_holds_the_client_back_not_server_memory(
    server: Server, ws: ClientConnection, http: httpx.Client
) -> None:
    """A client floods stdin (and bad messages) into a program that never reads them:
    the server buffers a bounded amount, then stops reading the WebSocket."""
    assert server.proc is not None
    job_id = start(ws, "import time\ntime.sleep(30)\n", limits={"wall_time_s": 30})
    baseline = _rss_bytes(server.proc.pid)
    # Random, so that the WebSocket's compression cannot make it small on the wire.
    chunk = json.dumps({"type": "stdin", "data": base64.b64encode(os.urandom(3 << 18)).decode()})
    sent = 0

    def flood() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionClosed):
            for _ in range(300):  # 300 MiB, were the server to take it all
                ws.send(chunk)
                ws.send("not json")
                sent += 1

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    flooder.join(timeout=8)  # a bound on the attack, not a measurement
    growth = _rss_bytes(server.proc.pid) - baseline
    assert flooder.is_alive(), (
        f"the flood ended after {sent} MiB: {ws.close_code} {ws.close_reason}"
    )
    assert sent < 100, f"the server took {sent} MiB of stdin the program never read"
    assert growth < 100 << 20, f"the server grew by {growth >> 20} MiB"
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    # A client held back is read no more, so the cancel comes over HTTP.
    assert http.post(f"/v1/executions/{job_id}/cancel").json()["status"] == "cancelled"
