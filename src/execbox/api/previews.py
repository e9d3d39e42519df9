"""The preview proxy: HTTP and WebSocket relays to a server listening inside a sandbox
(its own 127.0.0.1; the sandbox itself still has no network), reached two ways.

- Host form, `{port}-{sandbox_id}.{EXECBOX_PREVIEW_DOMAIN}` (as E2B and Codespaces do):
  the app has an origin of its own, so its pages, scripts and cookies reach nothing of
  execbox's. `PreviewHosts` routes these hosts before any route of the API.
- Path form, `/v1/sandboxes/{id}/ports/{port}/…`, for setups without wildcard DNS: the
  app shares execbox's origin (the API, the playground), so it is confined there. Every
  answer carries `Content-Security-Policy: sandbox` without `allow-same-origin` (the page
  runs in an opaque origin: no storage, cookies or readable API answers of execbox's),
  and no cookie passes either way, nor any header that acts on the whole origin.

Browsers cannot send an API key with a page load: a sandbox's preview token opens its
preview once in the query, and then rides in a cookie scoped to the preview."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

import httpcore
import websockets
from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from execbox.api.auth import authenticate
from execbox.api.problems import ProblemError, problem_response, problem_responses
from execbox.api.sandboxes import Port, SandboxId
from execbox.api.sandboxes import _problem as sandbox_problem
from execbox.api.sandboxes import _SandboxRoute as SandboxRoute
from execbox.errors import CallerError
from execbox.sandboxes.service import LiveSandbox, SandboxElsewhere, SandboxGone, SandboxService

TOKEN_PARAM = "execbox_preview_token"
COOKIE = "execbox_preview"
# Headers that belong to one hop (RFC 9110 §7.6.1), and the caller's credentials for
# execbox, which the sandbox must never see.
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"authorization", b"x-api-key",
}  # fmt: skip
# What an app may not say on execbox's origin: these act on the whole origin (its
# cookies, its stored data, where its service workers may reach).
ORIGIN_WIDE = {b"set-cookie", b"clear-site-data", b"service-worker-allowed"}
# An opaque origin for path-form pages: scripts, forms, popups (which inherit the
# sandbox), dialogs and downloads work; same-origin access to execbox does not.
SANDBOX_CSP = b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
PREVIEW_TIMEOUTS = {"connect": 10.0, "read": 300.0, "write": 60.0, "pool": 30.0}
WS_MAX_MESSAGE = 16 << 20
MAX_PORT = 65535
BODILESS = {204, 304}
FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but tab
HOST_LABEL = re.compile(r"(?P<port>[0-9]{1,6})-(?P<sandbox_id>[a-z0-9]{1,64})")


@dataclass(frozen=True)
class Preview:
    """One preview as the caller addressed it."""

    sandbox_id: str
    port: int
    own_origin: bool  # the host form; else the path form, on execbox's origin

    @property
    def prefix(self) -> str:
        """The URL path before the app's own."""
        return "" if self.own_origin else f"/v1/sandboxes/{self.sandbox_id}/ports/{self.port}"

    @property
    def cookie_path(self) -> str:
        return "/" if self.own_origin else f"/v1/sandboxes/{self.sandbox_id}/"


async def _authorize(connection: HTTPConnection, sandbox_id: str) -> tuple[LiveSandbox, bool]:
    """The sandbox, if the caller may reach it: an API key, its preview token in the
    query (True: the answer sets the cookie) or the cookie."""
    sandboxes: SandboxService = connection.app.state.sandboxes
    settings = connection.app.state.settings
    try:
        live = await sandboxes.live(sandbox_id)
    except Exception:
        # Whether a sandbox exists is for key holders only.
        authenticate(connection, settings.api_key_list)
        raise
    token = live.info.preview_token
    if hmac.compare_digest(connection.query_params.get(TOKEN_PARAM, ""), token):
        return live, True
    if hmac.compare_digest(connection.cookies.get(COOKIE, ""), token):
        return live, False
    authenticate(connection, settings.api_key_list)
    return live, False


def _app_target(connection: HTTPConnection, preview: Preview) -> str:
    """The path and query for the app, as the caller sent them (still percent-encoded),
    without the prefix and without our token."""
    raw_path = connection.scope.get("raw_path") or connection.scope["path"].encode()
    path = raw_path.decode("latin-1")
    if not preview.own_origin:  # after /v1/sandboxes/{id}/ports/{port}/
        segments = path.split("/", 6)
        # Fewer when a slash of the prefix came percent-encoded: the decoded path then.
        path = "/" + (segments[6] if len(segments) == 7 else quote(connection.path_params["path"]))
    query = [
        part
        for part in connection.url.query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != TOKEN_PARAM
    ]
    return path + ("?" + "&".join(query) if query else "")


def _app_request_headers(request: Request, preview: Preview) -> list[tuple[bytes, bytes]]:
    headers = []
    for name, value in request.headers.raw:
        if name in HOP_BY_HOP:
            continue
        if name == b"cookie":
            # On execbox's origin the visitor's cookies are execbox's and other sites'
            # (an SSO session, say), never the app's: it may set none there.
            if not preview.own_origin:
                continue
            value = b"; ".join(
                c for c in value.split(b"; ") if not c.startswith(COOKIE.encode() + b"=")
            )
        if value:
            headers.append((name, value))
    return headers


def _host_only(set_cookie: bytes) -> bytes:
    """The cookie without its Domain attribute: it stays on the app's own host instead
    of reaching every preview (and execbox) under a shared parent domain."""
    parts = set_cookie.split(b";")
    return b";".join(
        [parts[0], *(p for p in parts[1:] if p.strip().partition(b"=")[0].lower() != b"domain")]
    )


def _app_response_headers(
    status: int, headers: list[tuple[bytes, bytes]], preview: Preview
) -> list[tuple[bytes, bytes]]:
    """Every header the app sent (repeated ones too) that it may send from where the
    caller reached it."""
    kept = []
    for name, value in headers:
        name = name.lower()
        if name in HOP_BY_HOP or (not preview.own_origin and name in ORIGIN_WIDE):
            continue
        # These have no body, whatever length the app announces: the server would
        # wait for the bytes it says.
        if name == b"content-length" and status in BODILESS:
            continue
        kept.append((name, _host_only(value) if name == b"set-cookie" else value))
    if not preview.own_origin:
        kept.append((b"content-security-policy", SANDBOX_CSP))
    return kept


def _unrelayable(answer: httpcore.Response) -> str | None:
    """What in the app's answer cannot be relayed, if anything: a status that is not
    a final one (999, a stray 1xx), or a header our server refuses to send (httpcore
    unfolds obsolete line folding, which may leave control characters)."""
    if not 200 <= answer.status <= 599:
        return f"status {answer.status}"
    for name, value in answer.headers:
        if not FIELD_NAME.fullmatch(name) or FORBIDDEN_IN_VALUE.search(value):
            return f"header {name!r}: {value!r}"[:200]
    return None


async def _relay_http(request: Request, preview: Preview) -> Response:
    live, set_cookie = await _authorize(request, preview.sandbox_id)
    sandboxes: SandboxService = request.app.state.sandboxes
    port, sandbox_id = preview.port, preview.sandbox_id
    headers = [
        *_app_request_headers(request, preview),
        (b"host", f"127.0.0.1:{port}".encode()),
        (b"x-forwarded-host", request.headers.get("host", "").encode("latin-1")),
        (b"x-forwarded-proto", request.url.scheme.encode()),
    ]
    if preview.prefix:
        headers.append((b"x-forwarded-prefix", preview.prefix.encode()))
    upstream = httpcore.Request(
        request.method,
        httpcore.URL(
            scheme=b"http",
            host=b"127.0.0.1",
            port=port,
            target=_app_target(request, preview).encode("latin-1"),
        ),
        headers=headers,
        content=request.stream(),
        extensions={"timeout": PREVIEW_TIMEOUTS},
    )
    try:
        answer = await sandboxes.preview_pool(live).handle_async_request(upstream)
    except httpcore.ConnectError as exc:
        raise ProblemError(
            502, f"nothing listens on port {port} in sandbox {sandbox_id}: start a server on "
            "127.0.0.1 or 0.0.0.0 there",
        ) from exc  # fmt: skip
    except httpcore.TimeoutException as exc:
        raise ProblemError(504, f"port {port} in sandbox {sandbox_id} did not answer") from exc
    except httpcore.ProtocolError as exc:
        raise ProblemError(502, f"port {port} answered with invalid HTTP: {exc}") from exc
    if (flaw := _unrelayable(answer)) is not None:
        await answer.aclose()
        raise ProblemError(502, f"port {port} answered with invalid HTTP: {flaw}")
    response = StreamingResponse(
        answer.aiter_stream(), status_code=answer.status, background=BackgroundTask(answer.aclose)
    )
    response.raw_headers = _app_response_headers(answer.status, answer.headers, preview)
    if set_cookie:
        response.set_cookie(
            COOKIE, live.info.preview_token, path=preview.cookie_path, httponly=True,
            samesite="lax", secure=request.url.scheme == "https",
        )  # fmt: skip
    return response


async def _relay_websocket(websocket: WebSocket, preview: Preview) -> None:
    sandboxes: SandboxService = websocket.app.state.sandboxes
    port = preview.port
    try:
        await _authorize(websocket, preview.sandbox_id)
        sock = await sandboxes.open_port(preview.sandbox_id, port)
    except CallerError as exc:
        await websocket.close(code=1008, reason=exc.detail[:120])
        return
    except (LookupError, SandboxGone, SandboxElsewhere, OSError) as exc:
        await websocket.close(code=1011, reason=str(exc)[:120])
        return
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}{_app_target(websocket, preview)}",
            sock=sock,
            subprotocols=websocket.scope.get("subprotocols") or None,
            max_size=WS_MAX_MESSAGE,
            open_timeout=PREVIEW_TIMEOUTS["connect"],
        ) as upstream:
            await websocket.accept(subprotocol=upstream.subprotocol)
            await _relay(websocket, upstream)
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        with contextlib.suppress(RuntimeError):
            await websocket.close(code=1011, reason=f"port {port}: {exc}"[:120])


async def _relay(client: WebSocket, upstream: websockets.ClientConnection) -> None:
    async def down() -> None:
        async for message in upstream:
            if isinstance(message, str):
                await client.send_text(message)
            else:
                await client.send_bytes(message)

    async def up() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await upstream.send(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send(message["bytes"])

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await client.close()


# -- path form -------------------------------------------------------------------------

router = APIRouter(tags=["sandboxes"])
paths = APIRouter(
    prefix="/v1/sandboxes",
    route_class=SandboxRoute,
    responses=problem_responses(401, 404, 409, 410, 422, 502, 504),
)


@paths.api_route(
    "/{sandbox_id}/ports/{port}/{path:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    response_class=Response,
)
async def preview(sandbox_id: SandboxId, port: Port, path: str, request: Request) -> Response:
    """Forwards to the server listening on `port` inside the sandbox. Needs an API key,
    or the sandbox's `preview_token` (as `?execbox_preview_token=`, then its cookie).
    The app runs in an opaque origin here (CSP sandbox) and cookies do not pass; the
    host form `{port}-{sandbox_id}.{EXECBOX_PREVIEW_DOMAIN}` gives it an origin of its own."""
    return await _relay_http(request, Preview(sandbox_id, port, own_origin=False))


@router.websocket("/v1/sandboxes/{sandbox_id}/ports/{port}/{path:path}")
async def preview_websocket(
    websocket: WebSocket,
    sandbox_id: SandboxId,
    port: Port,
    path: str,
) -> None:
    """Relays a WebSocket to the server on `port` inside the sandbox."""
    await _relay_websocket(websocket, Preview(sandbox_id, port, own_origin=False))


router.include_router(paths)


# -- host form -------------------------------------------------------------------------


class PreviewHosts:
    """Serves `{port}-{sandbox_id}.{domain}` (any path, HTTP and WebSocket) as that
    sandbox's preview, before any route of the API; other hosts pass on. Without a
    domain, nothing is a preview host."""

    def __init__(self, app: ASGIApp, domain: str | None) -> None:
        self.app = app
        self.suffix = f".{domain.lower()}" if domain else None

    def _label(self, scope: Scope) -> str | None:
        """The host's first label, if the host is one of our preview hosts."""
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name, _, port = host.rpartition(":")
        if not port.isdigit():
            name = host
        name = name.removesuffix(".")  # the same host, fully qualified
        if self.suffix is None or not name.endswith(self.suffix):
            return None
        return name.removesuffix(self.suffix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        label = self._label(scope) if scope["type"] in ("http", "websocket") else None
        if label is None:
            await self.app(scope, receive, send)
            return
        try:
            preview = _parse_label(label)
        except ProblemError as exc:
            if scope["type"] == "websocket":
                await WebSocket(scope, receive, send).close(code=1008, reason=exc.detail[:120])
            else:
                await problem_response(exc.status, exc.detail)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await _relay_websocket(WebSocket(scope, receive, send), preview)
            return
        try:
            response = await _relay_http(Request(scope, receive), preview)
        except Exception as exc:
            problem = exc if isinstance(exc, CallerError) else sandbox_problem(exc)
            if problem is None:
                raise
            response = problem_response(
                problem.status, problem.detail, headers=problem.headers, **problem.extra
            )
        await response(scope, receive, send)


def _parse_label(label: str) -> Preview:
    match = HOST_LABEL.fullmatch(label)
    if match is None:
        raise ProblemError(
            404, f"{label!r} names no preview: preview hosts are {{port}}-{{sandbox_id}}"
        )
    port = int(match["port"])
    if not 1 <= port <= MAX_PORT:
        raise ProblemError(422, f"port {port} is not a TCP port: use 1 to {MAX_PORT}")
    return Preview(match["sandbox_id"], port, own_origin=True)
