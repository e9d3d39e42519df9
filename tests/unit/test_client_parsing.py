"""The SDK's requests, parsing and error mapping, sync and async, against a fake
server (httpx.MockTransport): no root, no real server."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest

from execbox.client import (
    APIError,
    AsyncClient,
    AsyncInteractive,
    AsyncJob,
    Client,
    Event,
    Interactive,
    InvalidRequestError,
    Job,
    NotFoundError,
    OutputEvent,
    RateLimitError,
    ResultEvent,
    ServerError,
    StatusEvent,
    TransportError,
)
from execbox.client import sandboxes as sdk
from execbox.models import ExecutionResult, Status, Verdict

SERVER = "http://execbox.test"
JOB = "a" * 32
RESULT = {
    "id": JOB,
    "status": "completed",
    "language": {"name": "python", "version": "3.11"},
    "verdict": "ok",
    "run": {"stdout": "hi\n", "verdict": "ok", "exit_code": 0},
}
NOW = "2026-01-01T00:00:00Z"
COMMAND = {
    "id": "c1",
    "sandbox_id": "s1",
    "cmd": ["sh", "-c", "echo hi"],
    "background": True,
    "status": "running",
    "started_at": NOW,
}
BUILD = {"id": "b1", "sandbox_id": "s1", "build_version": 1, "status": "queued", "created_at": NOW}

Handler = Callable[[httpx.Request], httpx.Response]


def sse(*events: tuple[str, Any], after: str = "") -> httpx.Response:
    """An event stream as the server writes it: pings, ids, one JSON per event."""
    lines = [": ping", ""]
    for seq, (kind, data) in enumerate(events, start=1):
        lines += [f"id: {seq}", f"event: {kind}", f"data: {json.dumps(data)}", ""]
    return httpx.Response(
        200, text="\n".join(lines) + "\n" + after, headers={"content-type": "text/event-stream"}
    )


class FakeServer:
    """Answers by (method, path); remembers each request."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        request.read()
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"title": "Not Found", "detail": "no such route"})
        return route(request)

    def body(self, index: int) -> Any:
        return json.loads(self.requests[index].content)


def answer(status: int, body: Any = None, **headers: str) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


async def _await(value: Coroutine[Any, Any, Any]) -> Any:
    return await value


def both(server: FakeServer) -> Iterator[tuple[Any, Callable[[Any], Any]]]:
    """The sync client and the async one, each with a way to get a result from it."""
    with Client(SERVER, transport=httpx.MockTransport(server)) as client:
        yield client, lambda value: value
    loop = asyncio.new_event_loop()
    aclient = AsyncClient(SERVER, transport=httpx.MockTransport(server))
    try:
        yield aclient, lambda value: loop.run_until_complete(_await(value))
    finally:
        loop.run_until_complete(aclient.close())
        loop.close()


def collect(events: Any, resolve: Callable[[Any], Any]) -> list[Any]:
    if hasattr(events, "__aiter__"):
        return resolve(_alist(events))  # type: ignore[no-any-return]
    return list(events)


async def _alist(events: Any) -> list[Any]:
    return [event async for event in events]


@pytest.mark.parametrize(
    ("status", "body", "headers", "error"),
    [
        (422, {"title": "Unprocessable", "detail": "unknown language"}, {}, InvalidRequestError),
        (404, {"title": "Not Found", "detail": "no such execution"}, {}, NotFoundError),
        (429, {"title": "Too Many Requests"}, {"retry-after": "3"}, RateLimitError),
        (503, {"title": "Unavailable", "debug_id": "d1"}, {}, ServerError),
    ],
)
def test_error_answers_raise_typed_errors(
    status: int, body: dict[str, Any], headers: dict[str, str], error: type[APIError]
) -> None:
    server = FakeServer({("POST", "/v1/executions"): answer(status, body, **headers)})
    for client, resolve in both(server):
        with pytest.raises(error) as raised:
            resolve(client.run("python", "print(1)"))
        assert raised.value.status == status and raised.value.problem["title"] == body["title"]
    if isinstance(raised.value, RateLimitError):
        assert raised.value.retry_after == 3.0


def test_an_error_answer_that_is_not_json_keeps_its_reason() -> None:
    server = FakeServer({("GET", "/v1/languages"): lambda _: httpx.Response(502, text="bad")})
    for client, resolve in both(server):
        with pytest.raises(ServerError) as raised:
            resolve(client.languages())
        assert raised.value.title == "Bad Gateway" and raised.value.detail == "bad"


def test_an_unreachable_server_is_a_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for client, resolve in both(FakeServer({("GET", "/v1/languages"): refuse})):
        with pytest.raises(TransportError, match="cannot reach"):
            resolve(client.languages())


def test_run_sends_the_checked_request_and_parses_the_result() -> None:
    server = FakeServer({("POST", "/v1/executions"): answer(200, RESULT)})
    for client, resolve in both(server):
        result = resolve(client.run("python", "print(1)", stdin="x"))
        assert result.verdict == Verdict.OK and result.run.stdout == "hi\n"
        with pytest.raises(ValueError):
            resolve(client.run("python"))  # neither code nor files: raised before sending
    assert [r.url.params["wait"] for r in server.requests] == ["true", "true"]
    assert server.body(0) == {"language": "python", "code": "print(1)", "stdin": "x"}


def test_events_are_parsed_up_to_the_result_and_update_the_job() -> None:
    queued = {**RESULT, "status": "queued", "verdict": None, "run": None}
    sent = (
        ("status", {"status": "running"}),
        ("future-kind", {"x": 1}),  # a kind this SDK does not know: skipped
        ("stdout", {"data": "hi\n"}),
        ("stderr", {"data_base64": "/w=="}),
        ("result", RESULT),
    )
    unread = 'id: 9\nevent: stdout\ndata: {"data": "never read"}\n\n'

    server = FakeServer(
        {
            ("POST", "/v1/executions"): answer(202, queued),
            ("GET", f"/v1/executions/{JOB}/events"): lambda _: sse(*sent, after=unread),
        }
    )
    for client, resolve in both(server):
        job = resolve(client.submit("python", "print(1)"))
        assert isinstance(job, Job | AsyncJob) and job.status == "queued"
        events = collect(job.events(after=7), resolve)
        assert [type(e) for e in events] == [StatusEvent, OutputEvent, OutputEvent, ResultEvent]
        assert [e.seq for e in events] == [1, 3, 4, 5]
        assert events[0].status == Status.RUNNING
        assert events[2].stream == "stderr" and events[2].data == b"\xff"
        assert job.result.status == Status.COMPLETED
        assert resolve(job.wait()).verdict == Verdict.OK  # finished: no new request
    streams = [r for r in server.requests if r.url.path.endswith("/events")]
    assert [r.headers["last-event-id"] for r in streams] == ["7", "7"]
    assert all(r.headers["accept"] == "text/event-stream" for r in streams)


def test_an_error_event_raises_its_problem() -> None:
    gone = ("error", {"status": 404, "title": "Not Found", "detail": "gone"})
    server = FakeServer({("GET", f"/v1/executions/{JOB}/events"): lambda _: sse(gone)})
    for client, resolve in both(server):
        queued = ExecutionResult.model_validate({**RESULT, "status": "queued"})
        job = (Job if isinstance(client, Client) else AsyncJob)(client, queued)
        with pytest.raises(NotFoundError, match="gone"):
            resolve(job.wait())


def sandbox_routes(written: list[str]) -> dict[tuple[str, str], Handler]:
    def write(text: str) -> httpx.Response:
        written.append(text)
        return httpx.Response(204)

    info = {
        "id": "s1",
        "status": "running",
        "metadata": {},
        "network": False,
        "limits": {"memory_mb": 256, "processes": 64, "cpus": 1, "disk_mb": 512},
        "created_at": NOW,
        "expires_at": NOW,
    }
    finished = {
        **COMMAND,
        "status": "finished",
        "finished_at": NOW,
        "result": {"stdout": "hi\n", "verdict": "ok", "exit_code": 0},
    }
    ready = {**BUILD, "status": "ready", "preview_url": "x"}
    return {
        ("GET", "/v1/sandboxes/s1"): answer(200, info),
        ("POST", "/v1/sandboxes/s1/commands"): answer(201, COMMAND),
        ("GET", "/v1/sandboxes/s1/commands/c1/events"): lambda _: sse(
            ("stdout", {"data": "hi\n"}), ("stderr", {"data": "oops\n"}), ("exit", finished)
        ),
        ("POST", "/v1/sandboxes/s1/builds"): answer(201, BUILD),
        ("GET", "/v1/sandboxes/s1/builds/b1/events"): lambda _: sse(
            ("build", BUILD),
            ("output", {"stream": "stdout", "data": "ok", "step": "check"}),
            ("build", ready),
        ),
        ("GET", "/v1/sandboxes/s1/builds/b1"): answer(200, ready),
        ("PUT", "/v1/sandboxes/s1/files/a b.txt"): lambda r: write(r.content.decode()),
    }


def test_sandbox_handles_run_their_flows_on_either_client() -> None:
    written: list[str] = []
    server = FakeServer(sandbox_routes(written))
    for client, resolve in both(server):
        sandbox = resolve(client.sandboxes.connect("s1"))
        assert sandbox.get_preview_url(8080) == f"{SERVER}/v1/sandboxes/s1/ports/8080/"
        resolve(sandbox.files.write("a b.txt", "text"))
        out: list[str] = []
        done = resolve(sandbox.commands.run("echo hi", on_stdout=out.append, on_stderr=out.append))
        assert out == ["hi\n", "oops\n"] and done.status == "finished"
        handle = resolve(sandbox.commands.run("sleep 9", background=True))
        assert isinstance(handle, sdk.CommandHandle | sdk.AsyncCommandHandle)
        kinds = [type(e).__name__ for e in collect(handle.events(), resolve)]
        assert kinds == ["OutputEvent", "OutputEvent", "CommandExit"]
        assert handle.info.status == "finished"
        updates: list[Event] = []
        build = resolve(
            sandbox.build([{"path": "a.py", "content": "1"}], check="true", on_event=updates.append)
        )
        statuses = [e.build.status for e in updates if isinstance(e, sdk.BuildUpdate)]
        assert build.status == "ready" and statuses == ["queued", "ready"]
        assert any(isinstance(e, OutputEvent) and e.stage == "check" for e in updates)
    assert written == ["text", "text"]
    runs = [json.loads(r.content) for r in server.requests if r.url.path.endswith("/commands")]
    # Streamed to callbacks: a background command with the foreground's timeout.
    assert runs[0] == {"cmd": "echo hi", "background": True, "env": {}, "timeout_s": 60.0}
    assert runs[1] == {"cmd": "sleep 9", "background": True, "env": {}}


TWINS = [
    (Client, AsyncClient),
    (Job, AsyncJob),
    (Interactive, AsyncInteractive),
    (sdk.Sandboxes, sdk.AsyncSandboxes),
    (sdk.Sandbox, sdk.AsyncSandbox),
    (sdk.SandboxFiles, sdk.AsyncSandboxFiles),
    (sdk.SandboxCommands, sdk.AsyncSandboxCommands),
    (sdk.CommandHandle, sdk.AsyncCommandHandle),
]


@pytest.mark.parametrize(("sync", "asynchronous"), TWINS)
def test_the_async_twin_has_the_same_methods_with_the_same_parameters(
    sync: type, asynchronous: type
) -> None:
    def methods(cls: type) -> dict[str, list[inspect.Parameter]]:
        """Each public method's parameters (the return types differ: T, or a coroutine)."""
        instance: Any = object.__new__(cls)  # methods only: no state is read
        names = [n for n in dir(cls) if not n.startswith("_")]
        found = {n: inspect.getattr_static(cls, n) for n in names}
        return {
            n: list(inspect.signature(getattr(instance, n)).parameters.values())
            for n, attribute in found.items()
            if not isinstance(attribute, property)
        }

    assert methods(sync) == methods(asynchronous)
