"""ASGI middleware (plain ASGI, so streams pass through untouched): request ids,
access logs and HTTP metrics; the request body cap; the Host and WebSocket Origin
checks that keep other web sites' pages out."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import structlog
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execbox.api.problems import problem_response
from execbox.config import Settings

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


# Names only this machine resolves to this machine: always answered to.
LOOPBACK_HOSTS = ("localhost", "*.localhost", "127.0.0.1", "[::1]")
_ADMITTED = "execbox.host_admitted"
# Why a WebSocket handshake is refused (uvicorn answers it with a 403).
_POLICY_VIOLATION = 1008


def trusted_hosts(settings: Settings, extra: Iterable[str] = ()) -> list[str]:
    """The Host patterns the API answers to: loopback names, EXECBOX_ALLOWED_HOSTS and
    ``extra`` (the host ``serve`` is bound to; host-routed previews' domain). Unset
    with API keys configured: any host, since a page that rebinds its own name to
    this server's address (DNS rebinding) has no key, and a deployment behind a load
    balancer must not break for want of this setting."""
    configured = settings.allowed_host_list
    if not configured and settings.api_key_list:
        return ["*"]
    return [*LOOPBACK_HOSTS, *configured, *extra]


class TrustedHosts:
    """Answers only requests whose Host is allowed: a web page that rebinds its own
    name to this server's address sends its own name, so it cannot read the API
    from the operator's browser. Starlette's TrustedHostMiddleware judges (wildcards,
    ports, IPv6 literals); this words the refusal as a problem (a 400; a WebSocket
    handshake gets a 403)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self._judge = TrustedHostMiddleware(_admit, allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        await self._judge(scope, receive, _discard)
        if scope.pop(_ADMITTED, False):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        detail = (
            f"this server does not answer to the host {host!r}; its admin can add it to "
            "EXECBOX_ALLOWED_HOSTS"
        )
        await _refuse(scope, receive, send, 400, detail)


async def _admit(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_ADMITTED] = True


async def _discard(message: Message) -> None:
    pass


class WebSocketOrigins:
    """Refuses WebSocket handshakes sent by other sites' pages. Browsers let any page
    open a WebSocket to any host (CORS does not apply) and say whose page it is in
    Origin: accepted are the same origin (Origin's host and port are the Host's),
    ``allowed_origins`` (``*``: any) and clients that send no Origin (CLI, SDK)."""

    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed_origins
        self.allowed_origins = {origin.lower().rstrip("/") for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self._allowed(origin, headers.get("host", "")):
                detail = f"WebSockets from pages of {origin} are not accepted (not this site)"
                await _refuse(scope, receive, send, 403, detail)
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        return (
            self.allow_any or origin.lower() in self.allowed_origins or _same_origin(origin, host)
        )


def _same_origin(origin: str, host: str) -> bool:
    try:
        page = urlsplit(origin)
        server = urlsplit(f"//{host}")
        if page.scheme not in ("http", "https") or not page.hostname:
            return False
        # A browser leaves the port out of Host exactly when the origin's is the default.
        default = 443 if page.scheme == "https" else 80
        return (page.hostname, page.port or default) == (server.hostname, server.port or default)
    except ValueError:  # a port that is not a number
        return False


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        log.info("websocket refused", path=scope["path"], status=status, detail=detail)
        await send({"type": "websocket.close", "code": _POLICY_VIOLATION, "reason": detail[:120]})
    else:
        await problem_response(status, detail)(scope, receive, send)
