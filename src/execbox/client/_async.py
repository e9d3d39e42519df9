"""The asyncio client: the transport seam over httpx.AsyncClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Self, TypeVar

import httpx

from execbox.client._config import Config
from execbox.client._events import Event, EventStream
from execbox.client._executions import AsyncJob, ClientCore
from execbox.client._flow import AsyncHandle, AsyncTransport
from execbox.client._interactive import AsyncInteractive
from execbox.client._request import Request, transport_error
from execbox.client.sandboxes import AsyncSandboxes

T = TypeVar("T")


class AsyncClient(ClientCore[AsyncTransport, AsyncJob, AsyncInteractive], AsyncHandle):
    """An asyncio execbox client; see ``Client`` for the arguments."""

    _job, _interactive = AsyncJob, AsyncInteractive

    def __init__(
        self,
        server: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        config = Config.make(server, api_key)
        super().__init__(self, config)  # a client runs its own operations
        self._http = httpx.AsyncClient(transport=transport, **config.http_options(timeout))
        self.sandboxes = AsyncSandboxes(self, config.base_url)  # persistent sandboxes

    async def _send(self, request: Request[T]) -> T:
        try:
            response = await self._http.send(request.build(self._http))
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return request.parse(response)

    async def _stream(self, request: Request[EventStream]) -> AsyncIterator[Event]:
        try:
            response = await self._http.send(request.build(self._http), stream=True)
            try:
                if not response.is_success:
                    await response.aread()
                events = request.parse(response)
                async for line in response.aiter_lines():
                    if (event := events.feed(line)) is not None:
                        yield event
                        if events.finished:
                            return
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
