"""ASGI middleware (plain ASGI, so streams pass through untouched): request ids,
access logs and HTTP metrics; the request body cap."""

from __future__ import annotations

import re
import secrets
import time

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execbox.api.problems import problem_response

log = structlog.get_logger("execbox.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    """Binds a request id to every log line of the request, echoes it as
    X-Request-ID, logs the request and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else secrets.token_hex(8)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                services = getattr(scope["app"].state, "services", None)
                if services is not None:
                    services.metrics.http_requests.labels(scope["method"], template, status).inc()
                    services.metrics.http_seconds.labels(scope["method"], template).observe(seconds)
                log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round(seconds * 1000, 2),
                )


class BodyLimit:
    """413 for bodies over ``max_bytes``: at once when Content-Length says so,
    otherwise as soon as the bytes read pass the cap (chunked uploads). Requests whose
    "METHOD path" matches ``exempt`` stream their body under caps of their own."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: re.Pattern[str] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.exempt is not None and self.exempt.fullmatch(f"{scope['method']} {scope['path']}")
        ):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await problem_response(413, self._detail())(scope, receive, send)
            return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, capped_receive, send)

    def _detail(self) -> str:
        return f"the request body is larger than this server accepts ({self.max_bytes} bytes)"
