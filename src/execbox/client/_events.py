"""Events of an execution, a command or a build, and the Server-Sent Events stream
that carries them."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from execbox.client._request import Request, check
from execbox.client.errors import error_for
from execbox.models import ExecutionResult, Status

# A job may print nothing for a while; the server pings every few seconds.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=None)


@dataclass(frozen=True, kw_only=True)
class Event:
    """An event of an execution. ``seq`` is its place in the job's log (SSE only):
    pass it as ``after`` to resume a stream."""

    seq: int | None = None


@dataclass(frozen=True, kw_only=True)
class StatusEvent(Event):
    """The job changed status, or (interactive) a stage began."""

    status: Status
    stage: str | None = None
    id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class OutputEvent(Event):
    stream: Literal["stdout", "stderr"]
    text: str
    stage: str | None = None
    raw: bytes | None = field(default=None, repr=False)  # when the bytes are not UTF-8
    dropped: int = 0  # interactive: bytes skipped before this one for a slow reader

    @property
    def data(self) -> bytes:
        return self.raw if self.raw is not None else self.text.encode()


@dataclass(frozen=True, kw_only=True)
class ResultEvent(Event):
    result: ExecutionResult


def parse_event(kind: str, data: dict[str, Any], seq: int | None = None) -> Event | None:
    """An SSE event or an interactive message as a typed event; None for kinds this
    SDK does not know (the server may add some). ``error`` raises the problem."""
    if kind == "status":
        return StatusEvent(
            seq=seq,
            status=Status(data["status"]),
            stage=data.get("stage"),
            id=data.get("id"),
            reason=data.get("reason"),
        )
    if kind in ("stdout", "stderr"):
        raw = base64.b64decode(data["data_base64"]) if "data_base64" in data else None
        text = data.get("data", raw.decode(errors="replace") if raw is not None else "")
        return OutputEvent(
            seq=seq,
            stream="stdout" if kind == "stdout" else "stderr",
            text=text,
            stage=data.get("stage"),
            raw=raw,
            dropped=data.get("dropped", 0),
        )
    if kind == "result":
        result = ExecutionResult.model_validate({k: v for k, v in data.items() if k != "type"})
        return ResultEvent(seq=seq, result=result)
    if kind == "error":
        raise error_for(int(data.get("status", 500)), data)
    return None


EventParser = Callable[[str, dict[str, Any], int | None], Event | None]
EventObserver = Callable[[Event], object]


class EventStream:
    """Reads one Server-Sent Events stream line by line, up to its last event; the
    observer sees each event first (a handle keeps what it learns)."""

    def __init__(
        self, parse: EventParser, last: Callable[[Event], bool], observe: EventObserver | None
    ) -> None:
        self._parse, self._last, self._observe = parse, last, observe
        self.finished = False
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Takes one line; returns an event when a blank line completes one."""
        if not line:
            return self._complete()
        if line.startswith(":"):
            return None  # a comment: the server's keepalive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None

    def _complete(self) -> Event | None:
        if not self._data:
            return None
        kind, data, seq = self._event, "\n".join(self._data), self._id
        self._event, self._data, self._id = "message", [], None
        event = self._parse(kind, json.loads(data), int(seq) if seq else None)
        if event is not None:
            if self._observe is not None:
                self._observe(event)
            self.finished = self._last(event)
        return event


def stream_request(
    path: str,
    after: int,
    *,
    last: Callable[[Event], bool],
    parse: EventParser = parse_event,
    observe: EventObserver | None = None,
) -> Request[EventStream]:
    """The request of an event stream from the start, or after event ``after``."""
    headers = {"Accept": "text/event-stream"}
    if after:
        headers["Last-Event-ID"] = str(after)

    def open_stream(response: httpx.Response) -> EventStream:
        check(response)
        return EventStream(parse, last, observe)

    return Request("GET", path, open_stream, headers=headers, timeout=STREAM_TIMEOUT)
