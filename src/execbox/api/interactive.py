"""``WS /v1/executions/interactive``: a job whose stdin is the WebSocket.

The first client message is an execution request (the body of POST /v1/executions).
The server answers with messages as things happen:

- ``{type: "status", status, id, stage?}``: the job was created and started, then
  each stage (``compiling``, ``running``) as it begins;
- ``{type: "stdout"|"stderr", stage, data, dropped?}``: output as the program writes it;
- ``{type: "result", ...}``: the execution result, the last message;
- ``{type: "error", status, title, detail, ...}``: problem JSON. Before the run (a
  bad request, no API key, too many sessions) the server then closes with code 4000
  + status; one with a ``debug_id`` (our failure) is the last message too; others
  (an unknown client message) leave the run going.

The client may send ``{type: "stdin", data}``, ``{type: "close_stdin"}`` and
``{type: "kill"}``. A kill, a client that disconnects, and ``POST
/v1/executions/{id}/cancel`` all kill the sandbox at once; the job ends cancelled.

The job is persisted like any other (status, stage and output events in its log,
its result), so GET, SSE and the activity log work on it too. It runs in this
process rather than through the queue: its stdin is this connection, which no
worker elsewhere could read.

Slow clients: live output waits in a buffer of at most ``OUTBOX_BYTES`` (each
message counted with its overhead; output of a stream waiting there is merged into
one message). Beyond
that, chunks are dropped from the live stream, never queued without bound and never
blocking the program's pipes; the next output message says how many bytes were
``dropped``. Nothing is lost for good: the result (and the job's record) carry the
whole output, which the sandbox caps at ``limits.output_kb`` anyway. Stdin the
program has not read waits in a buffer of at most ``STDIN_BYTES``; beyond, the server
reads no more client messages until the program reads (TCP then holds the client
back); replies to bad client messages are dropped while the outbox is full.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from execbox.api.auth import authenticate
from execbox.api.problems import ProblemError, problem_body, problem_of
from execbox.jobs.results import to_result
from execbox.jobs.service import new_job_id
from execbox.logging import internal_error
from execbox.models import ExecutionRequest
from execbox.runner import RunnerEvent
from execbox.wiring import Services

router = APIRouter()

OUTBOX_BYTES = 1 << 20
# What a queued output message costs beyond its bytes (its dict and strings).
MESSAGE_OVERHEAD = 512
MAX_MESSAGE_BYTES = 1 << 20
# Stdin the program has not read yet, at most (see _Stdin).
STDIN_BYTES = 1 << 20


@dataclass
class _Outbox:
    """Messages for the client. Output waiting to be sent counts against ``limit``
    bytes with each message's overhead, so that one-byte writes cannot queue a message
    per byte; output of one stream that is still waiting is merged into one message
    (decoded when it is sent)."""

    limit: int = OUTBOX_BYTES
    _messages: deque[dict[str, Any]] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: int = 0
    _dropped: int = 0
    _decoders: dict[str, codecs.IncrementalDecoder] = field(default_factory=dict)

    def put(self, message: dict[str, Any]) -> None:
        self._messages.append(message)
        self._ready.set()

    def notice(self, message: dict[str, Any]) -> None:
        """A message the client may miss (a reply to a bad message of its own): dropped
        while the outbox is full, so a client that sends and never reads cannot grow it."""
        if self._pending + MESSAGE_OVERHEAD <= self.limit:
            self._pending += MESSAGE_OVERHEAD
            self.put({**message, "_notice": True})

    def output(self, stream: str, stage: str, data: bytes) -> None:
        last = self._messages[-1] if self._messages else None
        if (
            last is not None
            and "_raw" in last
            and (last["type"], last["stage"]) == (stream, stage)
            and not self._dropped  # later output must not overtake a drop
        ):
            if self._pending + len(data) > self.limit:
                self._dropped += len(data)
                return
            last["_raw"] += data
            self._pending += len(data)
            return
        if self._pending + len(data) + MESSAGE_OVERHEAD > self.limit:
            self._dropped += len(data)
            return
        message: dict[str, Any] = {"type": stream, "stage": stage, "_raw": bytearray(data)}
        if self._dropped:
            message["dropped"], self._dropped = self._dropped, 0
        self._pending += len(data) + MESSAGE_OVERHEAD
        self.put(message)

    async def get(self) -> dict[str, Any]:
        while True:
            while not self._messages:
                self._ready.clear()
                await self._ready.wait()
            message = self._messages.popleft()
            if message.pop("_notice", False):
                self._pending -= MESSAGE_OVERHEAD
            raw = message.pop("_raw", None)
            if raw is None:
                return message
            self._pending -= len(raw) + MESSAGE_OVERHEAD
            # Live output is for display: bytes that are not UTF-8 show as U+FFFD here;
            # the result keeps them exact (stdout_base64).
            decoder = self._decoders.setdefault(
                message["type"], codecs.getincrementaldecoder("utf-8")(errors="replace")
            )
            message["data"] = decoder.decode(bytes(raw))
            if message["data"] or "dropped" in message:
                return message


class _Stdin:
    """What the client sent for the program's stdin and the program has not read yet,
    ``limit`` bytes at most: beyond, the client's next message waits (and with it the
    WebSocket, so TCP holds the client back), as a pipe would."""

    def __init__(self, limit: int = STDIN_BYTES) -> None:
        self._chunks: deque[bytes | None] = deque()
        self._pending = 0
        self._limit = limit
        self._changed = asyncio.Event()

    async def put(self, data: bytes | None) -> None:
        """Queues ``data``; None closes stdin."""
        while data and self._pending and self._pending + len(data) > self._limit:
            self._changed.clear()
            await self._changed.wait()
        self._chunks.append(data)
        self._pending += len(data or b"")
        self._changed.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while not self._chunks:
                self._changed.clear()
                await self._changed.wait()
            data = self._chunks.popleft()
            if data is None:
                return
            self._pending -= len(data)
            self._changed.set()
            yield data


def _read_request(text: str, services: Services) -> ExecutionRequest:
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProblemError(413, f"the request is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        request = ExecutionRequest.model_validate_json(text)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise ProblemError(422, detail) from exc
    services.runner.check(request, local_toolchains=True)
    if request.callback_url is not None:
        raise ProblemError(422, "callback_url is not available for interactive runs")
    return request


async def _refuse(websocket: WebSocket, exc: Exception) -> None:
    """Answers a request the run never started for with the problem, then closes with
    4000 + its status."""
    status, body, _ = problem_of(exc, websocket.url.path)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_json({**body, "type": "error"})
        await websocket.close(4000 + status, body["detail"][:120])


@router.websocket("/v1/executions/interactive")
async def interactive(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    await websocket.accept()
    try:
        # The key is checked once the request is in, so that the refusal is the
        # answer to it (a client that sends at once would find the socket closed).
        try:
            text = await websocket.receive_text()
        except KeyError:  # a binary message
            raise ProblemError(400, "send the request as a JSON text message") from None
        authenticate(websocket, services.settings.api_key_list, allow_query=True)
        request = _read_request(text, services)
        session = _Session(websocket, services, request)
        with services.interactive.session(session.job_id):
            await session.serve()
    except WebSocketDisconnect:
        return
    except Exception as exc:  # refused before the run: the run reports its own failures
        await _refuse(websocket, exc)


class _Session:
    def __init__(
        self,
        websocket: WebSocket,
        services: Services,
        request: ExecutionRequest,
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.request = request
        self.outbox = _Outbox()
        self.stdin = _Stdin()
        self.job_id = new_job_id()

    def kill(self) -> None:
        """Kills the program (or, before it started, makes it end cancelled at once).
        Only the run is stopped, never the task that records the job, so the job
        always gets its end written."""
        self.services.job_runner.stop(self.job_id, "cancel")

    async def serve(self) -> None:
        run = asyncio.create_task(self._run())
        sender = asyncio.create_task(self._send())
        receiver = asyncio.create_task(self._receive())
        try:
            # The run ends with the result in the outbox; the sender ends once it
            # sent it, or when the client is gone.
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not run.done():
                self.kill()  # the client is gone
            receiver.cancel()
            await run  # the job's end is recorded before the handler returns
            sender.cancel()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self.websocket.close()

    async def _send(self) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                message = await self.outbox.get()
                await self.websocket.send_json(message)
                if message["type"] == "result" or message.get("debug_id"):
                    return  # the last message: the result, or our failure to run

    async def _receive(self) -> None:
        """Client messages until it disconnects; a kill cancels the run."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                try:
                    message = json.loads(await self.websocket.receive_text())
                    kind = message["type"]
                except (ValueError, KeyError, TypeError, RecursionError):  # nested too deep
                    self.outbox.notice(_error(400, "messages are JSON objects with a `type`"))
                    continue
                if kind == "stdin" and isinstance(message.get("data"), str):
                    await self.stdin.put(message["data"].encode())
                elif kind == "close_stdin":
                    await self.stdin.put(None)
                elif kind == "kill":
                    self.kill()
                else:
                    detail = f"unknown message {kind!r}: expected stdin, close_stdin or kill"
                    self.outbox.notice(_error(400, detail))

    async def _program_stdin(self) -> AsyncIterator[bytes]:
        if self.request.stdin:
            yield self.request.stdin.encode()
        async for data in self.stdin.chunks():
            yield data

    def _on_event(self, event: RunnerEvent) -> None:
        if event.kind == "stage":
            self.outbox.put({"type": "status", "status": "running", "stage": event.stage})
        else:
            self.outbox.output(event.kind, event.stage, event.data)

    async def _run(self) -> None:
        services = self.services
        try:
            language = services.language_ref(self.request.language)
            await services.jobs.submit(self.request, language, self.job_id, interactive=True)
            self.outbox.put({"type": "status", "status": "running", "id": self.job_id})
            job = await services.job_runner.run_job(
                self.job_id, stdin=self._program_stdin(), on_event=self._on_event
            )
            if job is None:  # recorded by someone else (recovery, say): read it back
                job = await services.jobs.get(self.job_id)
        except Exception:
            # The job could not even be created or recorded (the store is down?).
            debug_id = internal_error("interactive run failed", job_id=self.job_id)
            detail = "execbox could not run or record this run (an internal error)"
            self.outbox.put(_error(500, detail, debug_id=debug_id))
            return
        self.outbox.put({"type": "result", **to_result(job).model_dump(mode="json")})


def _error(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {**problem_body(status, detail, **extra), "type": "error"}
