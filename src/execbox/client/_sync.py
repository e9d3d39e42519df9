"""The synchronous client: the transport seam over httpx.Client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Self, TypeVar

import httpx

from execbox.client._config import Config
from execbox.client._events import Event, EventStream
from execbox.client._executions import ClientCore, Job
from execbox.client._flow import SyncHandle, SyncTransport
from execbox.client._interactive import Interactive
from execbox.client._request import Request, transport_error
from execbox.client.sandboxes import Sandboxes

T = TypeVar("T")


class Client(ClientCore[SyncTransport, Job, Interactive], SyncHandle):
    """A synchronous execbox client.

    ``server`` defaults to $EXECBOX_SERVER (else http://127.0.0.1:8000), ``api_key``
    to $EXECBOX_API_KEY. Use it as a context manager, or call ``close()``.
    """

    _job, _interactive = Job, Interactive

    def __init__(
        self,
        server: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        config = Config.make(server, api_key)
        super().__init__(self, config)  # a client runs its own operations
        self._http = httpx.Client(transport=transport, **config.http_options(timeout))
        self.sandboxes = Sandboxes(self, config.base_url)  # persistent sandboxes

    def _send(self, request: Request[T]) -> T:
        try:
            response = self._http.send(request.build(self._http))
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return request.parse(response)

    def _stream(self, request: Request[EventStream]) -> Iterator[Event]:
        try:
            response = self._http.send(request.build(self._http), stream=True)
            try:
                if not response.is_success:
                    response.read()
                events = request.parse(response)
                for line in response.iter_lines():
                    if (event := events.feed(line)) is not None:
                        yield event
                        if events.finished:
                            return
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
