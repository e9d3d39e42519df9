"""The asyncio client: httpx.AsyncClient and websockets' asyncio connection. The
twin of _sync.py; everything but the transport lives in _core.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Self, TypeVar, Unpack

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

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
from execbox.client.sandboxes import AsyncSandboxes
from execbox.languages import LanguageInfo
from execbox.models import ExecutionRequest, ExecutionResult

T = TypeVar("T")


class AsyncClient:
    """An asyncio execbox client; see ``Client`` for the arguments."""

    def __init__(
        self,
        server: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = Config.make(server, api_key)
        self._http = httpx.AsyncClient(transport=transport, **self._config.http_options(timeout))
        self.sandboxes = AsyncSandboxes(self)  # persistent sandboxes (execbox.client.sandboxes)

    async def _call(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, json=call.body, params=call.params
            )
        except httpx.TransportError as exc:
            raise _core.transport_error(exc) from exc
        return call.parse(response)

    async def run(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> ExecutionResult:
        """Runs a program and returns its result."""
        return await self._call(_core.run_call(_core.build_request(language, code, options)))

    async def submit(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> AsyncJob:
        """Queues a program; returns at once with a handle on the job."""
        body = _core.build_request(language, code, options)
        return AsyncJob(self, await self._call(_core.submit_call(body)))

    async def get(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, await self._call(_core.get_call(job_id)))

    async def languages(self) -> list[LanguageInfo]:
        return await self._call(_core.languages_call())

    def interactive(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> AsyncInteractive:
        """A live run: ``async with client.interactive(...) as run``."""
        return AsyncInteractive(self._config, _core.build_request(language, code, options))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncJob(JobHandle):
    """A submitted execution. ``result`` is what was last heard of it."""

    def __init__(self, client: AsyncClient, result: ExecutionResult) -> None:
        super().__init__(result)
        self._client = client

    async def refresh(self) -> ExecutionResult:
        self.result = await self._client._call(_core.get_call(self.id))
        return self.result

    async def cancel(self) -> ExecutionResult:
        self.result = await self._client._call(_core.cancel_call(self.id))
        return self.result

    async def events(self, after: int = 0) -> AsyncIterator[Event]:
        """The job's events (SSE) from the start, or after event ``after``, to the result."""
        decoder = _core.SSEDecoder()
        try:
            async with self._client._http.stream(
                **_core.events_request(self.id, after)
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _core.check(response)
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    if event is None:
                        continue
                    yield event
                    if isinstance(event, ResultEvent):
                        self.result = event.result
                        return
        except httpx.TransportError as exc:
            raise _core.transport_error(exc) from exc

    async def wait(self) -> ExecutionResult:
        """Waits for the job to finish (following its events) and returns the result."""
        if self.result.status not in _core.TERMINAL:
            async for _ in self.events():
                pass
        return self.result


class AsyncInteractive(InteractiveHandle):
    """A live run; see ``Interactive``. Iterate with ``async for``."""

    def __init__(self, config: Config, body: dict[str, Any]) -> None:
        super().__init__(config, body)
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> Self:
        try:
            self._ws = await connect(
                self._config.websocket_url(),
                additional_headers=self._config.headers,
                max_size=_core.MAX_MESSAGE_BYTES,
            )
            await self._ws.send(_core.request_message(self._body))
        except (OSError, WebSocketException) as exc:
            raise _core.transport_error(exc) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("use the interactive run as a context manager: `async with`")
        return self._ws

    async def _send(self, message: str) -> None:
        try:
            await self._connection().send(message)
        except ConnectionClosed as exc:
            raise self._state.closed_early(exc) from exc

    async def send(self, text: str) -> None:
        await self._send(_core.stdin_message(text))

    async def close_stdin(self) -> None:
        await self._send(_core.CLOSE_STDIN)

    async def kill(self) -> None:
        await self._send(_core.KILL)

    async def __aiter__(self) -> AsyncIterator[Event]:
        ws = self._connection()
        while self._state.result is None:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                raise self._state.closed_early(exc) from exc
            event = self._state.receive(message)
            if event is not None:
                yield event

    async def wait(self) -> ExecutionResult:
        """Reads events to the end; returns the result."""
        async for _ in self:
            pass
        return self._final()
