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
whole output, which the sandbox caps at ``limits.output_kb`` anyway.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hmac
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from execbox.jobs import INTERACTIVE, new_job_id, to_result
from execbox.logging import internal_error
from execbox.models import ExecutionRequest, ExecutionResult, Status
from execbox.runner import InvalidRequest, RunnerEvent
from execbox.services import Services
from execbox.store import EventKind, Job, JobEvent, utcnow
from execbox.worker import EventLog

router = APIRouter()

OUTBOX_BYTES = 1 << 20
# What a queued output message costs beyond its bytes (its dict and strings).
MESSAGE_OVERHEAD = 512
# Interactive runs wait on people, so they do not take worker slots; this caps them.
SESSIONS_PER_WORKER = 4
MAX_MESSAGE_BYTES = 1 << 20


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


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


class _Sessions:
    """The interactive runs of this process, so that a cancel request reaches them."""

    def __init__(self, services: Services) -> None:
        self.running: dict[str, _Session] = {}
        self.limit = services.settings.workers * SESSIONS_PER_WORKER
        services.bus.on_cancel_request(self._on_cancel)

    def _on_cancel(self, job_id: str) -> None:
        session = self.running.get(job_id)
        if session is not None:
            session.kill()


def _sessions(websocket: WebSocket) -> _Sessions:
    state = websocket.app.state
    if getattr(state, "interactive_sessions", None) is None:
        state.interactive_sessions = _Sessions(state.services)
    sessions: _Sessions = state.interactive_sessions
    return sessions


def _authorize(websocket: WebSocket, services: Services) -> None:
    """The HTTP API's rule: with keys configured, every credential presented must be
    one of them (Authorization: Bearer, X-API-Key, or, since browsers cannot set
    headers on a WebSocket, the ``api_key`` query parameter)."""
    keys = services.settings.api_key_list
    if not keys:
        return
    given: list[str] = []
    if (authorization := websocket.headers.get("authorization")) is not None:
        scheme, _, token = authorization.partition(" ")
        given.append(token.strip() if scheme.lower() == "bearer" else "")
    for credential in (websocket.headers.get("x-api-key"), websocket.query_params.get("api_key")):
        if credential is not None:
            given.append(credential)
    if not given:
        raise _Refused(401, "an API key is required: send `Authorization: Bearer KEY`")
    # Compared with every key in constant time, so timing reveals nothing of any key.
    if not all(any([hmac.compare_digest(c.encode(), k.encode()) for k in keys]) for c in given):
        raise _Refused(401, "the API key is not valid")


def _read_request(text: str, services: Services) -> ExecutionRequest:
    if len(text) > MAX_MESSAGE_BYTES:
        raise _Refused(413, f"the request is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        request = ExecutionRequest.model_validate_json(text)
        services.runner.check(request)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise _Refused(422, detail) from exc
    except InvalidRequest as exc:
        raise _Refused(422, str(exc)) from exc
    if request.callback_url is not None:
        raise _Refused(422, "callback_url is not available for interactive runs")
    return request


async def _refuse(websocket: WebSocket, refused: _Refused) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_json(_error(refused.status, refused.detail))
        await websocket.close(4000 + refused.status, refused.detail[:120])


@router.websocket("/v1/executions/interactive")
async def interactive(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    sessions = _sessions(websocket)
    await websocket.accept()
    try:
        # The key is checked once the request is in, so that the refusal is the
        # answer to it (a client that sends at once would find the socket closed).
        try:
            text = await websocket.receive_text()
        except KeyError:  # a binary message
            raise _Refused(400, "send the request as a JSON text message") from None
        _authorize(websocket, services)
        request = _read_request(text, services)
        if len(sessions.running) >= sessions.limit:
            raise _Refused(429, f"{sessions.limit} interactive runs are going on; try later")
    except _Refused as refused:
        await _refuse(websocket, refused)
        return
    except WebSocketDisconnect:
        return
    await _Session(websocket, services, sessions, request).serve()


class _Session:
    def __init__(
        self,
        websocket: WebSocket,
        services: Services,
        sessions: _Sessions,
        request: ExecutionRequest,
    ) -> None:
        self.websocket = websocket
        self.services = services
        self.sessions = sessions
        self.request = request
        self.outbox = _Outbox()
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.job_id = new_job_id()
        self._killed = False
        self._execution: asyncio.Task[ExecutionResult] | None = None

    def kill(self) -> None:
        """Kills the program (or, before it started, makes it end cancelled at once).
        Only the execution is cancelled, never the task that records the job, so the
        job always gets its end written."""
        self._killed = True
        if self._execution is not None:
            self._execution.cancel()

    async def serve(self) -> None:
        run = asyncio.create_task(self._run())
        self.sessions.running[self.job_id] = self
        sender = asyncio.create_task(self._send())
        receiver = asyncio.create_task(self._receive())
        try:
            # The run ends with the result in the outbox; the sender ends once it
            # sent it, or when the client is gone.
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.kill()  # the client is gone (or all is done: then a no-op)
            receiver.cancel()
            await run  # the job's end is recorded before the handler returns
            sender.cancel()
            self.sessions.running.pop(self.job_id, None)
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
                except (ValueError, KeyError, TypeError):
                    self.outbox.put(_error(400, "messages are JSON objects with a `type`"))
                    continue
                if kind == "stdin" and isinstance(message.get("data"), str):
                    self.stdin.put_nowait(message["data"].encode())
                elif kind == "close_stdin":
                    self.stdin.put_nowait(None)
                elif kind == "kill":
                    self.kill()
                else:
                    self.outbox.put(_error(400, f"unknown message {kind!r}: expected stdin, "
                                               "close_stdin or kill"))  # fmt: skip

    async def _program_stdin(self) -> AsyncIterator[bytes]:
        if self.request.stdin:
            yield self.request.stdin.encode()
        while (data := await self.stdin.get()) is not None:
            yield data

    def _on_event(self, events: EventLog, event: RunnerEvent) -> None:
        events.add(event)
        if event.kind == "stage":
            self.outbox.put({"type": "status", "status": "running", "stage": event.stage})
        else:
            self.outbox.output(event.kind, event.stage, event.data)

    async def _start(self) -> Job:
        jobs = self.services.jobs
        language = self.services.language_ref(self.request.language)
        job = Job(
            id=self.job_id,
            status=Status.QUEUED,
            language=language.name,
            language_version=language.version,
            request=self.request,
            created_at=utcnow(),
        )
        created = await jobs.store.create(
            job, [JobEvent(EventKind.STATUS, {"status": "queued", "reason": INTERACTIVE})]
        )
        await jobs.bus.publish(job.id, created)
        claimed = await jobs.claim(job.id)
        assert claimed is not None  # nobody else knows of this job yet
        return claimed

    async def _run(self) -> None:
        try:
            await self._run_job()
        except Exception:
            # The job could not even be created or recorded (the store is down?).
            debug_id = internal_error("interactive run failed", job_id=self.job_id)
            detail = "execbox could not run or record this run (an internal error)"
            self.outbox.put({**_error(500, detail), "debug_id": debug_id})

    async def _run_job(self) -> None:
        jobs = self.services.jobs
        metrics = self.services.metrics
        job = await self._start()
        self.outbox.put({"type": "status", "status": "running", "id": job.id})
        metrics.record_started(job)
        events = EventLog(jobs, job.id)
        self._execution = asyncio.create_task(
            self.services.runner.execute(
                self.request,
                on_event=lambda event: self._on_event(events, event),
                stdin=self._program_stdin(),
            )
        )
        if self._killed:
            self._execution.cancel()
        try:
            result = await self._execution
        except asyncio.CancelledError:
            if not self._killed:
                raise  # this task itself is cancelled: not a kill
            job = await jobs.cancelled(job.id, await events.close())
        except Exception:
            debug_id = internal_error("interactive run failed", job_id=job.id)
            message = "execbox failed to run this job (an internal error)"
            job = await jobs.fail(job.id, message, debug_id, await events.close())
        else:
            job = await jobs.complete(job.id, result, await events.close())
        finally:
            metrics.record_finished()
        final = to_result(job)
        metrics.record_result(final)
        self.outbox.put({"type": "result", **final.model_dump(mode="json")})


def _error(status: int, detail: str) -> dict[str, Any]:
    return {
        "type": "error",
        "status": status,
        "title": HTTPStatus(status).phrase,
        "detail": detail,
    }
