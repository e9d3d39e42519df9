"""What the sync and async clients share: building requests, parsing responses,
events and the interactive protocol. Only the transport differs between the two
(httpx.Client or httpx.AsyncClient; websockets' sync or asyncio connection)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypedDict, TypeVar

import httpx
from pydantic import TypeAdapter

from execbox.client.errors import ExecboxError, TransportError, error_for
from execbox.languages import LanguageInfo
from execbox.models import ExecutionRequest, ExecutionResult, Limits, SourceFile, Status, TestCase

T = TypeVar("T")

DEFAULT_SERVER = "http://127.0.0.1:8000"
# A synchronous run lasts as long as the program (limits up to minutes, tests many).
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=600.0)
# A result carries up to limits.output_kb of stdout and stderr, base64 too if binary.
MAX_MESSAGE_BYTES = 128 << 20
INTERACTIVE_PATH = "/v1/executions/interactive"
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


class RunOptions(TypedDict, total=False):
    """Everything of an execution request besides the language and the code."""

    version: str
    files: Sequence[SourceFile | Mapping[str, str]]
    stdin: str
    args: Sequence[str]
    env: Mapping[str, str]
    tests: Sequence[TestCase | Mapping[str, Any]]
    limits: Limits | Mapping[str, Any]
    compile_limits: Limits | Mapping[str, Any]
    network: bool
    callback_url: str


def build_request(
    language: str | ExecutionRequest, code: str | None, options: RunOptions
) -> dict[str, Any]:
    """The request body, checked here first so that a mistake raises at once
    (pydantic's ValidationError, a ValueError) without a round trip."""
    if isinstance(language, ExecutionRequest):
        request = language.model_copy(update=dict(options))
    else:
        request = ExecutionRequest.model_validate({"language": language, "code": code, **options})
    return request.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


# -- events ----------------------------------------------------------------------------


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


class SSEDecoder:
    """Server-Sent Events from a stream of lines (the text/event-stream format)."""

    def __init__(self, parse: EventParser | None = None) -> None:
        self._parse = parse or parse_event  # sandboxes parse their own kinds of event
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Takes one line; returns an event when a blank line completes one."""
        if not line:
            if not self._data:
                return None
            kind, data, seq = self._event, "\n".join(self._data), self._id
            self._event, self._data, self._id = "message", [], None
            return self._parse(kind, json.loads(data), int(seq) if seq else None)
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


# -- HTTP calls ------------------------------------------------------------------------


def check(response: httpx.Response) -> httpx.Response:
    """Raises the typed error of an error response."""
    if response.is_success:
        return response
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    if "retry_after" not in problem and "retry-after" in response.headers:
        problem["retry_after"] = response.headers["retry-after"]
    raise error_for(response.status_code, problem)


def _result(response: httpx.Response) -> ExecutionResult:
    return ExecutionResult.model_validate_json(check(response).content)


_LANGUAGES = TypeAdapter(list[LanguageInfo])


def _languages(response: httpx.Response) -> list[LanguageInfo]:
    return _LANGUAGES.validate_json(check(response).content)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: what to send, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: Any = None
    params: Mapping[str, str] | None = None


def run_call(body: dict[str, Any]) -> Call[ExecutionResult]:
    return Call("POST", "/v1/executions", _result, body, {"wait": "true"})


def submit_call(body: dict[str, Any]) -> Call[ExecutionResult]:
    return Call("POST", "/v1/executions", _result, body, {"wait": "false"})


def get_call(job_id: str) -> Call[ExecutionResult]:
    return Call("GET", f"/v1/executions/{job_id}", _result)


def cancel_call(job_id: str) -> Call[ExecutionResult]:
    return Call("POST", f"/v1/executions/{job_id}/cancel", _result)


def languages_call() -> Call[list[LanguageInfo]]:
    return Call("GET", "/v1/languages", _languages)


def events_request(job_id: str, after: int) -> dict[str, Any]:
    """Arguments of the SSE request (httpx ``stream``)."""
    headers = {"Accept": "text/event-stream"}
    if after:
        headers["Last-Event-ID"] = str(after)
    return {
        "method": "GET",
        "url": f"/v1/executions/{job_id}/events",
        "headers": headers,
        # A job may print nothing for a while; the server pings every few seconds.
        "timeout": httpx.Timeout(30.0, read=None),
    }


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    base_url: str
    headers: dict[str, str]

    @classmethod
    def make(cls, server: str | None, api_key: str | None) -> Config:
        """``server`` defaults to $EXECBOX_SERVER, ``api_key`` to $EXECBOX_API_KEY."""
        base_url = (server or os.environ.get("EXECBOX_SERVER") or DEFAULT_SERVER).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("EXECBOX_API_KEY")
        headers = {"User-Agent": "execbox-python"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return cls(base_url, headers)

    def http_options(self, timeout: httpx.Timeout | float | None) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": self.headers,
            "timeout": DEFAULT_TIMEOUT if timeout is None else timeout,
        }

    def websocket_url(self) -> str:
        scheme, sep, rest = self.base_url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError(f"the server URL must start with http:// or https://: {self.base_url}")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{INTERACTIVE_PATH}"


# -- handles -------------------------------------------------------------------------


class JobHandle:
    """What a job handle knows, sync or async: ``result`` is what was last heard."""

    def __init__(self, result: ExecutionResult) -> None:
        if result.id is None:
            raise ValueError("the server answered without an execution id")
        self.id: str = result.id
        self.result = result

    @property
    def status(self) -> str:
        return self.result.status.value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status}>"


class InteractiveHandle:
    """What an interactive run knows, sync or async: its id once started, its result
    once finished."""

    def __init__(self, config: Config, body: dict[str, Any]) -> None:
        self._config = config
        self._body = body
        self._state = InteractiveState()

    @property
    def id(self) -> str | None:
        return self._state.id

    @property
    def result(self) -> ExecutionResult | None:
        return self._state.result

    def _final(self) -> ExecutionResult:
        assert self._state.result is not None, "iterated to the end, so the result came"
        return self._state.result


# -- the interactive protocol ----------------------------------------------------------


def request_message(body: dict[str, Any]) -> str:
    return json.dumps(body)


def stdin_message(text: str) -> str:
    return json.dumps({"type": "stdin", "data": text})


CLOSE_STDIN = json.dumps({"type": "close_stdin"})
KILL = json.dumps({"type": "kill"})


class InteractiveState:
    """Reads the server's messages of one interactive run."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.result: ExecutionResult | None = None

    def receive(self, message: str | bytes) -> Event | None:
        data = json.loads(message)
        event = parse_event(data.get("type", ""), data)
        if isinstance(event, StatusEvent) and event.id:
            self.id = event.id
        elif isinstance(event, ResultEvent):
            self.result = event.result
        return event

    def closed_early(self, reason: BaseException) -> ExecboxError:
        return TransportError(f"the connection closed before the result: {reason}")


def transport_error(exc: Exception) -> TransportError:
    return TransportError(f"cannot reach the execbox server: {exc}")
