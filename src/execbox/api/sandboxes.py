"""Persistent sandboxes over HTTP: lifecycle, files, commands and builds (their preview
proxy is execbox.api.previews). Thin: the work is in execbox.sandboxes."""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

from fastapi import (
    APIRouter,
    Body,
    Depends,
    FastAPI,
    Header,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from sse_starlette import EventSourceResponse, ServerSentEvent

from execbox.api.auth import require_api_key
from execbox.api.problems import ProblemError, problem_responses
from execbox.engine import SandboxBusy, WorkspacePathError
from execbox.engine.workspace import WorkspaceNameTooLong, split_path
from execbox.sandboxes.builds import BuildNotFound, Builds, public_preview_url
from execbox.sandboxes.eventlog import EventLog
from execbox.sandboxes.schemas import (
    BuildCreate,
    BuildInfo,
    CommandCreate,
    CommandInfo,
    FileEntry,
    SandboxCreate,
    SandboxInfo,
    SandboxStatus,
    StdinInput,
    TimeoutUpdate,
)
from execbox.sandboxes.service import (
    CommandNotFound,
    FileTooLarge,
    InvalidSandboxRequest,
    SandboxElsewhere,
    SandboxGone,
    SandboxNotFound,
    SandboxService,
    TooManyCommands,
    TooManySandboxes,
)
from execbox.wiring import Services

BINARY = {"type": "string", "format": "binary"}
MAX_LISTED = 1000  # directory entries per page of a listing
# File uploads stream to the workspace under their own caps, not the JSON body cap.
STREAMED_UPLOADS = re.compile(r"PUT /v1/sandboxes/[^/]+/files/.+", re.DOTALL)


def _problem(exc: Exception) -> ProblemError | None:
    """The problem a sandbox error means for the caller, if it is one of ours."""
    # The workspace reports a missing parent directory as a path error caused by it.
    if isinstance(exc, FileNotFoundError) or isinstance(exc.__cause__, FileNotFoundError):
        return ProblemError(404, "no such file or directory in the workspace")
    match exc:
        case SandboxNotFound():
            return ProblemError(404, f"no sandbox with id {exc}")
        case SandboxGone():
            return ProblemError(410, str(exc), sandbox=exc.info.model_dump(mode="json"))
        case CommandNotFound() | BuildNotFound():
            return ProblemError(404, str(exc))
        case TooManySandboxes() | TooManyCommands():
            return ProblemError(429, str(exc), headers={"Retry-After": "10"})
        case SandboxBusy():  # the host's sandbox uids are all in use
            return ProblemError(503, str(exc), headers={"Retry-After": "10"})
        case SandboxElsewhere():
            return ProblemError(409, str(exc))
        case InvalidSandboxRequest() | WorkspaceNameTooLong():
            return ProblemError(422, str(exc))
        case WorkspacePathError():
            return ProblemError(400, str(exc))
        case IsADirectoryError() | NotADirectoryError():
            return ProblemError(400, "the path names a directory where a file is needed")
        case FileTooLarge():
            return ProblemError(413, str(exc))
        case OSError() if exc.errno == errno.ETXTBSY:
            return ProblemError(409, "the file is a running program: stop it, then write it")
        case OSError() if exc.errno == errno.ENOTEMPTY:
            return ProblemError(
                409, "a program wrote into the directory while it was removed: stop it, then retry"
            )
        case OSError() if exc.errno == errno.ENOSPC:
            return ProblemError(507, "the workspace is full: remove files or ask for more disk_mb")
    return None


class _SandboxRoute(APIRoute):
    """Turns the sandbox layer's errors into problem responses."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                problem = _problem(exc)
                if problem is None:
                    raise
                raise problem from exc

        return handle


router = APIRouter(tags=["sandboxes"])
http = APIRouter(
    prefix="/v1/sandboxes",
    route_class=_SandboxRoute,
    dependencies=[Depends(require_api_key)],
    # Every route may meet every sandbox problem (gone, elsewhere, at the cap, ...).
    responses=problem_responses(400, 401, 404, 409, 410, 413, 422, 429, 502, 503, 504, 507),
)

SandboxId = Annotated[str, Path(max_length=64)]
CommandId = Annotated[str, Path(max_length=64)]
Port = Annotated[int, Path(ge=1, le=65535)]


@contextlib.asynccontextmanager
async def running(app: FastAPI, services: Services) -> AsyncIterator[None]:
    """Sandboxes for the app's lifetime, on the engine and database of ``services``;
    they all end (and are recorded as lost) when it stops."""
    service = await SandboxService.start(services.settings, services.runner.sandbox, services.db)
    app.state.sandboxes = service
    app.state.sandbox_builds = Builds(service)
    try:
        yield
    finally:
        await service.close()


def get_sandboxes(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.sandboxes
    return service


SandboxesDep = Annotated[SandboxService, Depends(get_sandboxes)]


def _preview_url(request: Request, path: str) -> str:
    """A preview path as an absolute URL of this server, as the caller reached it."""
    domain = request.app.state.sandboxes.config.preview_domain
    return public_preview_url(path, str(request.base_url), domain)


def _public(request: Request, info: Any) -> Any:
    if getattr(info, "preview_url", None):
        return info.model_copy(update={"preview_url": _preview_url(request, info.preview_url)})
    return info


# -- lifecycle -------------------------------------------------------------------------


@http.post("", status_code=201, response_model=SandboxInfo)
async def create_sandbox(
    body: SandboxCreate, request: Request, response: Response, sandboxes: SandboxesDep
) -> SandboxInfo:
    info = await sandboxes.create(body)
    response.headers["Location"] = f"/v1/sandboxes/{info.id}"
    return _public(request, info)


@http.get("", response_model=list[SandboxInfo])
async def list_sandboxes(
    request: Request,
    sandboxes: SandboxesDep,
    status: SandboxStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SandboxInfo]:
    """Newest first; filter on metadata with `?metadata.KEY=VALUE` (all must match)."""
    metadata = {
        key.removeprefix("metadata."): value
        for key, value in request.query_params.items()
        if key.startswith("metadata.")
    }
    found = await sandboxes.list(metadata, status, limit)
    return [_public(request, info) for info in found]


@http.get("/{sandbox_id}", response_model=SandboxInfo)
async def get_sandbox(
    sandbox_id: SandboxId, request: Request, sandboxes: SandboxesDep
) -> SandboxInfo:
    """Also for ended sandboxes: their status and end_reason say why."""
    return _public(request, await sandboxes.get(sandbox_id))


@http.delete("/{sandbox_id}", response_model=SandboxInfo)
async def delete_sandbox(sandbox_id: SandboxId, sandboxes: SandboxesDep) -> SandboxInfo:
    """Kills every process and frees the workspace."""
    return await sandboxes.kill(sandbox_id)


@http.post(
    "/{sandbox_id}/timeout",
    response_model=SandboxInfo,
)
async def set_timeout(
    sandbox_id: SandboxId, body: TimeoutUpdate, request: Request, sandboxes: SandboxesDep
) -> SandboxInfo:
    """The sandbox now expires `timeout_s` from now."""
    return _public(request, await sandboxes.set_timeout(sandbox_id, body.timeout_s))


# -- files -----------------------------------------------------------------------------


def _lossless_path(request: Request, decoded: str) -> str:
    """The `{path}` of a files route with its bytes that are not UTF-8 kept (as the
    surrogate escapes the workspace encodes back to the same bytes): the server
    decodes URLs with replacement characters, which would name another file."""
    raw_tail = request.scope.get("raw_path", b"").split(b"/", 5)[-1].decode("latin-1")
    # Only if the raw tail is exactly what the router matched (it always is, unless an
    # id holds an encoded slash).
    if unquote(raw_tail) != decoded:
        return decoded
    return unquote(raw_tail, errors="surrogateescape")


def _lossless_query(request: Request, name: str) -> str:
    """A query parameter with its bytes that are not UTF-8 kept (see _lossless_path)."""
    query = request.scope["query_string"].decode("latin-1")
    given = dict(parse_qsl(query, keep_blank_values=True, errors="surrogateescape"))
    return given.get(name, "")


def _shown(name: str) -> tuple[str, str | None]:
    """A name as JSON text (U+FFFD for bytes that are not UTF-8) and, only for such a
    name, its exact bytes in base64."""
    raw = os.fsencode(name)
    try:
        return raw.decode(), None
    except UnicodeDecodeError:
        return raw.decode(errors="replace"), base64.b64encode(raw).decode()


def _decode_cursor(cursor: str | None) -> bytes:
    if cursor is None:
        return b""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ProblemError(
            422, "cursor: pass the X-Next-Cursor of the previous page unchanged"
        ) from exc


@http.get("/{sandbox_id}/files", response_model=list[FileEntry])
async def list_files(
    sandbox_id: SandboxId,
    request: Request,
    response: Response,
    sandboxes: SandboxesDep,
    path: str = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = MAX_LISTED,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> list[FileEntry]:
    """The directory's entries in the byte order of their names, at most `limit` at a
    time: when more remain, the `X-Next-Cursor` header holds the `cursor` of the next
    page."""
    directory = _lossless_query(request, "path")  # `path`, with any bytes that are not UTF-8
    entries = await sandboxes.list_files(sandbox_id, directory, _decode_cursor(cursor), limit + 1)
    if len(entries) > limit:
        del entries[limit:]
        last = os.fsencode(entries[-1].name)
        response.headers["X-Next-Cursor"] = base64.urlsafe_b64encode(last).decode().rstrip("=")
    prefix = "/".join(split_path(directory))
    listed = []
    for entry in entries:
        name, name_base64 = _shown(entry.name)
        entry_path, path_base64 = _shown(f"{prefix}/{entry.name}".lstrip("/"))
        listed.append(
            FileEntry(
                name=name,
                path=entry_path,
                type=entry.type,
                size=entry.size,
                mtime=datetime.fromtimestamp(entry.mtime, UTC),
                name_base64=name_base64,
                path_base64=path_base64,
            )
        )
    return listed


@http.put(
    "/{sandbox_id}/files/{path:path}",
    status_code=201,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": BINARY}}}},
)
async def write_file(
    sandbox_id: SandboxId, path: str, request: Request, sandboxes: SandboxesDep
) -> dict[str, Any]:
    """The request body, byte for byte and streamed, becomes the file (parents are
    created). Up to `EXECBOX_SANDBOX_FILE_MB` (413 past it) and the sandbox's disk (507):
    the server's JSON body cap does not apply."""
    length = request.headers.get("content-length", "")
    declared = int(length) if length.isdigit() else None
    target = _lossless_path(request, path)
    size = await sandboxes.write_file(sandbox_id, target, request.stream(), declared)
    return {"path": _shown(target)[0], "size": size}


@http.get(
    "/{sandbox_id}/files/{path:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def read_file(
    sandbox_id: SandboxId, path: str, request: Request, sandboxes: SandboxesDep
) -> Response:
    size, chunks = await sandboxes.read_file(sandbox_id, _lossless_path(request, path))
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )


@http.delete("/{sandbox_id}/files/{path:path}", status_code=204)
async def remove_file(
    sandbox_id: SandboxId, path: str, request: Request, sandboxes: SandboxesDep
) -> Response:
    await sandboxes.remove_file(sandbox_id, _lossless_path(request, path))
    return Response(status_code=204)


# -- commands ----------------------------------------------------------------------------


@http.post(
    "/{sandbox_id}/commands",
    response_model=CommandInfo,
    responses={
        202: {"model": CommandInfo},
    },
)
async def run_command(
    sandbox_id: SandboxId, body: CommandCreate, response: Response, sandboxes: SandboxesDep
) -> CommandInfo:
    """Foreground: answers when the command ends, with its `result` (a Stage).
    Background: answers 202 at once; follow `…/commands/{id}/events`."""
    info = await sandboxes.run_command(sandbox_id, body)
    if body.background:
        response.status_code = 202
        response.headers["Location"] = f"/v1/sandboxes/{sandbox_id}/commands/{info.id}"
    return info


@http.get("/{sandbox_id}/commands", response_model=list[CommandInfo])
async def list_commands(sandbox_id: SandboxId, sandboxes: SandboxesDep) -> list[CommandInfo]:
    return await sandboxes.commands(sandbox_id)


@http.get(
    "/{sandbox_id}/commands/{command_id}",
    response_model=CommandInfo,
)
async def get_command(
    sandbox_id: SandboxId, command_id: CommandId, sandboxes: SandboxesDep
) -> CommandInfo:
    return (await sandboxes.command(sandbox_id, command_id)).info


LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", pattern=r"^[0-9]{1,9}$", description="Resume after this id"),
]


async def _sse(events: EventLog, after: int, request: Request) -> AsyncIterator[ServerSentEvent]:
    async for event in events.follow(after):
        data = event.data
        if str(data.get("preview_url") or "").startswith("/"):
            data = {**data, "preview_url": _preview_url(request, data["preview_url"])}
        yield ServerSentEvent(data=json.dumps(data), event=event.kind, id=str(event.seq))


@http.get(
    "/{sandbox_id}/commands/{command_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `stdout`, `stderr` ({data, data_base64?}), "
            "then `exit` (the command with its result); replayable from the start or after "
            "Last-Event-ID; `dropped` stands for output beyond the kept budget",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def command_events(
    sandbox_id: SandboxId,
    command_id: CommandId,
    request: Request,
    sandboxes: SandboxesDep,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    command = await sandboxes.command(sandbox_id, command_id)
    return EventSourceResponse(
        _sse(command.log, int(last_event_id or 0), request),
        ping=request.app.state.settings.sse_ping_s,
    )


@http.post(
    "/{sandbox_id}/commands/{command_id}/stdin",
    status_code=204,
)
async def command_stdin(
    sandbox_id: SandboxId, command_id: CommandId, body: StdinInput, sandboxes: SandboxesDep
) -> Response:
    data = body.data.encode() if body.encoding == "utf8" else _b64(body.data)
    await sandboxes.send_stdin(sandbox_id, command_id, data, body.close)
    return Response(status_code=204)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProblemError(422, "data is not valid base64") from exc


@http.delete(
    "/{sandbox_id}/commands/{command_id}",
    response_model=CommandInfo,
)
async def kill_command(
    sandbox_id: SandboxId, command_id: CommandId, sandboxes: SandboxesDep
) -> CommandInfo:
    """Kills the command and what it started (its process group)."""
    return await sandboxes.kill_command(sandbox_id, command_id)


# -- builds ------------------------------------------------------------------------------


def get_builds(request: Request) -> Builds:
    builds: Builds = request.app.state.sandbox_builds
    return builds


BuildsDep = Annotated[Builds, Depends(get_builds)]


@http.post(
    "/{sandbox_id}/builds",
    status_code=202,
    response_model=BuildInfo,
)
async def create_build(
    sandbox_id: SandboxId,
    body: Annotated[BuildCreate, Body()],
    request: Request,
    response: Response,
    builds: BuildsDep,
) -> BuildInfo:
    """queued → scaffold → deps → checks → starting → ready | failed; follow it at
    `…/builds/{id}/events`."""
    build = await builds.submit(sandbox_id, body)
    response.headers["Location"] = f"/v1/sandboxes/{sandbox_id}/builds/{build.id}"
    return _public(request, build)


@http.get("/{sandbox_id}/builds", response_model=list[BuildInfo])
async def list_builds(
    sandbox_id: SandboxId, request: Request, builds: BuildsDep
) -> list[BuildInfo]:
    return [_public(request, b) for b in await builds.list(sandbox_id)]


@http.get("/{sandbox_id}/builds/{build_id}", response_model=BuildInfo)
async def get_build(
    sandbox_id: SandboxId, build_id: CommandId, request: Request, builds: BuildsDep
) -> BuildInfo:
    return _public(request, (await builds.get(sandbox_id, build_id))[0])


@http.get(
    "/{sandbox_id}/builds/{build_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `build` (the record, at every change) and "
            "`output` ({step, stream, data}), until the build is ready or failed",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def build_events(
    sandbox_id: SandboxId,
    build_id: CommandId,
    request: Request,
    builds: BuildsDep,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    build, events = await builds.get(sandbox_id, build_id)
    if events is None:  # from the store: its final state is all there is
        events = EventLog(0)
        events.append("build", _public(request, build).model_dump(mode="json"))
        events.close()
    return EventSourceResponse(
        _sse(events, int(last_event_id or 0), request), ping=request.app.state.settings.sse_ping_s
    )


router.include_router(http)
