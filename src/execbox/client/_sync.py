"""The synchronous client: httpx.Client and websockets' sync connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Self, TypeVar, Unpack

import httpx
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from execbox.client import _core
from execbox.client._core import (
    Call,
    Config,
    Event,
    InteractiveHandle,
    JobHandle,
    ResultEvent,
    RunOptions,
)
from execbox.client.sandboxes import Sandboxes
from execbox.languages import LanguageInfo
from execbox.models import ExecutionRequest, ExecutionResult

T = TypeVar("T")


class Client:
    """A synchronous execbox client.

    ``server`` defaults to $EXECBOX_SERVER (else http://127.0.0.1:8000), ``api_key``
    to $EXECBOX_API_KEY. Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = Config.make(server, api_key)
        self._http = httpx.Client(transport=transport, **self._config.http_options(timeout))
        self.sandboxes = Sandboxes(self)  # persistent sandboxes (execbox.client.sandboxes)

    def _call(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, json=call.body, params=call.params
            )
        except httpx.TransportError as exc:
            raise _core.transport_error(exc) from exc
        return call.parse(response)

    def run(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> ExecutionResult:
        """Runs a program and returns its result."""
        return self._call(_core.run_call(_core.build_request(language, code, options)))

    def submit(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> Job:
        """Queues a program; returns at once with a handle on the job."""
        body = _core.build_request(language, code, options)
        return Job(self, self._call(_core.submit_call(body)))

    def get(self, job_id: str) -> Job:
        return Job(self, self._call(_core.get_call(job_id)))

    def languages(self) -> list[LanguageInfo]:
        return self._call(_core.languages_call())

    def interactive(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> Interactive:
        """A run whose stdin and output are live: ``with client.interactive(...) as run``."""
        return Interactive(self._config, _core.build_request(language, code, options))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Job(JobHandle):
    """A submitted execution. ``result`` is what was last heard of it."""

    def __init__(self, client: Client, result: ExecutionResult) -> None:
        super().__init__(result)
        self._client = client

    def refresh(self) -> ExecutionResult:
        self.result = self._client._call(_core.get_call(self.id))
        return self.result

    def cancel(self) -> ExecutionResult:
        self.result = self._client._call(_core.cancel_call(self.id))
        return self.result

    def events(self, after: int = 0) -> Iterator[Event]:
        """The job's events (SSE) from the start, or after event ``after``, to the result."""
        decoder = _core.SSEDecoder()
        try:
            with self._client._http.stream(**_core.events_request(self.id, after)) as response:
                if not response.is_success:
                    response.read()
                    _core.check(response)
                for line in response.iter_lines():
                    event = decoder.feed(line)
                    if event is None:
                        continue
                    yield event
                    if isinstance(event, ResultEvent):
                        self.result = event.result
                        return
        except httpx.TransportError as exc:
            raise _core.transport_error(exc) from exc

    def wait(self) -> ExecutionResult:
        """Waits for the job to finish (following its events) and returns the result."""
        if self.result.status not in _core.TERMINAL:
            for _ in self.events():
                pass
        return self.result


class Interactive(InteractiveHandle):
    """A live run. Iterate to get its events up to the result; ``send()`` text to its
    stdin, ``close_stdin()``, ``kill()``. Leaving the block ends the connection,
    which kills the program if it still runs."""

    def __init__(self, config: Config, body: dict[str, Any]) -> None:
        super().__init__(config, body)
        self._ws: ClientConnection | None = None
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Self:
        try:
            self._ws = self._exit.enter_context(
                connect(
                    self._config.websocket_url(),
                    additional_headers=self._config.headers,
                    max_size=_core.MAX_MESSAGE_BYTES,
                )
            )
            self._ws.send(_core.request_message(self._body))
        except (OSError, WebSocketException) as exc:
            raise _core.transport_error(exc) from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._exit.close()

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("use the interactive run as a context manager: `with ... as run`")
        return self._ws

    def _send(self, message: str) -> None:
        try:
            self._connection().send(message)
        except ConnectionClosed as exc:
            raise self._state.closed_early(exc) from exc

    def send(self, text: str) -> None:
        self._send(_core.stdin_message(text))

    def close_stdin(self) -> None:
        self._send(_core.CLOSE_STDIN)

    def kill(self) -> None:
        self._send(_core.KILL)

    def __iter__(self) -> Iterator[Event]:
        ws = self._connection()
        while self._state.result is None:
            try:
                message = ws.recv()
            except ConnectionClosed as exc:
                raise self._state.closed_early(exc) from exc
            event = self._state.receive(message)
            if event is not None:
                yield event

    def wait(self) -> ExecutionResult:
        """Reads events to the end; returns the result."""
        for _ in self:
            pass
        return self._final()
