"""Interactive runs over the WebSocket: the protocol once, and its two connections
(websockets' sync and asyncio clients), which are all that differs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from execbox.client._config import Config
from execbox.client._events import Event, ResultEvent, StatusEvent, parse_event
from execbox.client._request import transport_error
from execbox.client.errors import TransportError
from execbox.models import ExecutionResult

# A result carries up to limits.output_kb of stdout and stderr, base64 too if binary.
MAX_MESSAGE_BYTES = 128 << 20
CLOSE_STDIN = json.dumps({"type": "close_stdin"})
KILL = json.dumps({"type": "kill"})


def stdin_message(text: str) -> str:
    return json.dumps({"type": "stdin", "data": text})


def closed_early(reason: BaseException) -> TransportError:
    return TransportError(f"the connection closed before the result: {reason}")


class InteractiveHandle:
    """What an interactive run knows, sync or async: its id once started, its result
    once finished."""

    def __init__(self, config: Config, body: dict[str, Any]) -> None:
        self._config = config
        self._request = json.dumps(body)
        self.id: str | None = None
        self.result: ExecutionResult | None = None

    def _connect_options(self) -> dict[str, Any]:
        return {"additional_headers": self._config.headers, "max_size": MAX_MESSAGE_BYTES}

    def _receive(self, message: str | bytes) -> Event | None:
        """Reads one message of the server's."""
        data = json.loads(message)
        event = parse_event(data.get("type", ""), data)
        if isinstance(event, StatusEvent) and event.id:
            self.id = event.id
        elif isinstance(event, ResultEvent):
            self.result = event.result
        return event

    def _final(self) -> ExecutionResult:
        assert self.result is not None, "iterated to the end, so the result came"
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
            url = self._config.websocket_url()
            self._ws = self._exit.enter_context(connect(url, **self._connect_options()))
            self._ws.send(self._request)
        except (OSError, WebSocketException) as exc:
            raise transport_error(exc) from exc
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
            raise closed_early(exc) from exc

    def send(self, text: str) -> None:
        self._send(stdin_message(text))

    def close_stdin(self) -> None:
        self._send(CLOSE_STDIN)

    def kill(self) -> None:
        self._send(KILL)

    def __iter__(self) -> Iterator[Event]:
        ws = self._connection()
        while self.result is None:
            try:
                message = ws.recv()
            except ConnectionClosed as exc:
                raise closed_early(exc) from exc
            if (event := self._receive(message)) is not None:
                yield event

    def wait(self) -> ExecutionResult:
        """Reads events to the end; returns the result."""
        for _ in self:
            pass
        return self._final()


class AsyncInteractive(InteractiveHandle):
    """A live run; see ``Interactive``. Iterate with ``async for``."""

    def __init__(self, config: Config, body: dict[str, Any]) -> None:
        super().__init__(config, body)
        self._ws: AsyncConnection | None = None

    async def __aenter__(self) -> Self:
        try:
            url = self._config.websocket_url()
            self._ws = await async_connect(url, **self._connect_options())
            await self._ws.send(self._request)
        except (OSError, WebSocketException) as exc:
            raise transport_error(exc) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    def _connection(self) -> AsyncConnection:
        if self._ws is None:
            raise RuntimeError("use the interactive run as a context manager: `async with`")
        return self._ws

    async def _send(self, message: str) -> None:
        try:
            await self._connection().send(message)
        except ConnectionClosed as exc:
            raise closed_early(exc) from exc

    async def send(self, text: str) -> None:
        await self._send(stdin_message(text))

    async def close_stdin(self) -> None:
        await self._send(CLOSE_STDIN)

    async def kill(self) -> None:
        await self._send(KILL)

    async def __aiter__(self) -> AsyncIterator[Event]:
        ws = self._connection()
        while self.result is None:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                raise closed_early(exc) from exc
            if (event := self._receive(message)) is not None:
                yield event

    async def wait(self) -> ExecutionResult:
        """Reads events to the end; returns the result."""
        async for _ in self:
            pass
        return self._final()
