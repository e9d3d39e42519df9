"""Persistent sandboxes in the SDK: ``client.sandboxes``, sync and asyncio twins over
the shared core below (requests and parsing; only the I/O differs).

    with Client() as client:
        sandbox = client.sandboxes.create(timeout_s=600, metadata={"owner": "me"})
        sandbox.files.write("app.py", "print('hi')")
        done = sandbox.commands.run("python3 app.py", on_stdout=print)
        server = sandbox.commands.run("python3 -m http.server 8080", background=True)
        print(sandbox.get_preview_url(8080))
        sandbox.kill()

    # elsewhere, later: the same sandbox, by id
    sandbox = client.sandboxes.connect(sandbox_id)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, Unpack

import httpx
from pydantic import BaseModel, TypeAdapter

from execbox.client._core import (
    Event,
    OutputEvent,
    SSEDecoder,
    check,
    parse_event,
    transport_error,
)
from execbox.models import SourceFile
from execbox.sandboxes.schemas import (
    BuildCreate,
    BuildInfo,
    BuildStatus,
    CommandCreate,
    CommandInfo,
    FileEntry,
    SandboxCreate,
    SandboxInfo,
    StartSpec,
)

if TYPE_CHECKING:
    from execbox.client._async import AsyncClient
    from execbox.client._sync import Client

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

OutputHandler = Callable[[str], Any]
# A foreground command streamed to callbacks runs as a background one with this
# timeout unless told otherwise: the server's own foreground default.
STREAMED_TIMEOUT_S = 60.0
FINAL_BUILD = (BuildStatus.READY, BuildStatus.FAILED)

# -- core ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    content: bytes | None = None
    params: Mapping[str, str] | None = None


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: cls.model_validate_json(check(response).content)


def _models(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    adapter = TypeAdapter(list[cls])  # type: ignore[valid-type]
    return lambda response: adapter.validate_json(check(response).content)


FilePage = tuple[list[FileEntry], str | None]
_file_entries = _models(FileEntry)


def _file_page(response: httpx.Response) -> FilePage:
    """A page of a directory listing, and the cursor of the next one (None at the end)."""
    return _file_entries(response), response.headers.get("x-next-cursor")


def _content(response: httpx.Response) -> bytes:
    return check(response).content


def _nothing(response: httpx.Response) -> None:
    check(response)


def _path(sandbox_id: str, *rest: str) -> str:
    return "/".join(["/v1/sandboxes", sandbox_id, *rest])


def create_request(
    timeout_s: float | None,
    metadata: Mapping[str, str] | None,
    limits: Mapping[str, Any] | None,
    network: bool,
) -> Request[SandboxInfo]:
    body = SandboxCreate.model_validate(
        {"timeout_s": timeout_s, "metadata": metadata or {}, "limits": limits or {},
         "network": network}
    )  # fmt: skip
    return Request("POST", "/v1/sandboxes", _model(SandboxInfo), body.model_dump(mode="json"))


def list_request(
    metadata: Mapping[str, str] | None, status: str | None, limit: int
) -> Request[list[SandboxInfo]]:
    params = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
    params["limit"] = str(limit)
    if status:
        params["status"] = status
    return Request("GET", "/v1/sandboxes", _models(SandboxInfo), params=params)


def command_body(
    cmd: Sequence[str] | str,
    *,
    background: bool,
    cwd: str | None,
    env: Mapping[str, str] | None,
    stdin: str | None,
    timeout_s: float | None,
) -> dict[str, Any]:
    command = CommandCreate(
        cmd=cmd if isinstance(cmd, str) else list(cmd), background=background, cwd=cwd,
        env=dict(env or {}), stdin=stdin, timeout_s=timeout_s,
    )  # fmt: skip
    return command.model_dump(mode="json", exclude_none=True)


def build_body(
    files: Sequence[SourceFile | Mapping[str, str]],
    install: Sequence[str] | str | None,
    check: Sequence[str] | str | None,
    start: StartSpec | Mapping[str, Any] | None,
) -> dict[str, Any]:
    def argv(cmd: Sequence[str] | str | None) -> list[str] | str | None:
        return cmd if cmd is None or isinstance(cmd, str) else list(cmd)

    body = BuildCreate.model_validate(
        {"files": list(files), "install": argv(install), "check": argv(check), "start": start}
    )
    return body.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True, kw_only=True)
class CommandExit(Event):
    """A command ended: the last event of its stream."""

    command: CommandInfo


@dataclass(frozen=True, kw_only=True)
class BuildUpdate(Event):
    """A build changed (a step began or ended); ``build.status`` says where it is."""

    build: BuildInfo


def parse_sandbox_event(kind: str, data: dict[str, Any], seq: int | None) -> Event | None:
    if kind == "exit":
        return CommandExit(seq=seq, command=CommandInfo.model_validate(data))
    if kind == "build":
        return BuildUpdate(seq=seq, build=BuildInfo.model_validate(data))
    if kind == "output":  # a build step's output
        stream = "stderr" if data.get("stream") == "stderr" else "stdout"
        return OutputEvent(seq=seq, stream=stream, text=data["data"], stage=data.get("step"))
    return parse_event(kind, data, seq)


def stream_request(path: str, after: int) -> dict[str, Any]:
    headers = {"Accept": "text/event-stream"}
    if after:
        headers["Last-Event-ID"] = str(after)
    # A server may be quiet for long; the execbox server pings every few seconds.
    return {"method": "GET", "url": path, "headers": headers,
            "timeout": httpx.Timeout(30.0, read=None)}  # fmt: skip


def is_last(event: Event) -> bool:
    if isinstance(event, BuildUpdate):
        return event.build.status in FINAL_BUILD
    return isinstance(event, CommandExit)


def deliver(event: Event, on_stdout: OutputHandler | None, on_stderr: OutputHandler | None) -> None:
    if isinstance(event, OutputEvent):
        handler = on_stdout if event.stream == "stdout" else on_stderr
        if handler is not None:
            handler(event.text)


def preview_url(base_url: str, sandbox_id: str, port: int) -> str:
    return f"{base_url}{_path(sandbox_id, 'ports', str(port))}/"


class Calls:
    """Every request of a sandbox, built once for both twins."""

    def __init__(self, sandbox_id: str) -> None:
        self.id = sandbox_id

    def info(self) -> Request[SandboxInfo]:
        return Request("GET", _path(self.id), _model(SandboxInfo))

    def set_timeout(self, timeout_s: float) -> Request[SandboxInfo]:
        body = {"timeout_s": timeout_s}
        return Request("POST", _path(self.id, "timeout"), _model(SandboxInfo), body)

    def kill(self) -> Request[SandboxInfo]:
        return Request("DELETE", _path(self.id), _model(SandboxInfo))

    def build(self, body: dict[str, Any]) -> Request[BuildInfo]:
        return Request("POST", _path(self.id, "builds"), _model(BuildInfo), body)

    def get_build(self, build_id: str) -> Request[BuildInfo]:
        return Request("GET", _path(self.id, "builds", build_id), _model(BuildInfo))

    def build_events(self, build_id: str) -> str:
        return _path(self.id, "builds", build_id, "events")

    def write(self, path: str, data: bytes | str) -> Request[None]:
        content = data.encode() if isinstance(data, str) else data
        return Request("PUT", _path(self.id, "files", path), _nothing, content=content)

    def read(self, path: str) -> Request[bytes]:
        return Request("GET", _path(self.id, "files", path), _content)

    def list_files(self, path: str, cursor: str | None) -> Request[FilePage]:
        params = {"path": path} if cursor is None else {"path": path, "cursor": cursor}
        return Request("GET", _path(self.id, "files"), _file_page, params=params)

    def remove(self, path: str) -> Request[None]:
        return Request("DELETE", _path(self.id, "files", path), _nothing)

    def run(
        self,
        cmd: Sequence[str] | str,
        background: bool,
        streamed: bool,
        options: Mapping[str, Any],
    ) -> Request[CommandInfo]:
        """A foreground command streamed to callbacks runs as a background one (its
        output then comes over SSE), with the foreground's default timeout."""
        timeout_s = options.get("timeout_s")
        if streamed and timeout_s is None:
            timeout_s = STREAMED_TIMEOUT_S
        body = command_body(
            cmd, background=background or streamed, cwd=options.get("cwd"),
            env=options.get("env"), stdin=options.get("stdin"), timeout_s=timeout_s,
        )  # fmt: skip
        return Request("POST", _path(self.id, "commands"), _model(CommandInfo), body)

    def command(self, command_id: str) -> Request[CommandInfo]:
        return Request("GET", _path(self.id, "commands", command_id), _model(CommandInfo))

    def commands(self) -> Request[list[CommandInfo]]:
        return Request("GET", _path(self.id, "commands"), _models(CommandInfo))


class CommandCalls:
    def __init__(self, info: CommandInfo) -> None:
        self.path = _path(info.sandbox_id, "commands", info.id)

    def events(self) -> str:
        return self.path + "/events"

    def stdin(self, data: str, close: bool) -> Request[None]:
        return Request("POST", self.path + "/stdin", _nothing, {"data": data, "close": close})

    def kill(self) -> Request[CommandInfo]:
        return Request("DELETE", self.path, _model(CommandInfo))


class RunOptions(TypedDict, total=False):
    cwd: str
    env: Mapping[str, str]
    stdin: str
    timeout_s: float


# -- sync ------------------------------------------------------------------------------


class Sandboxes:
    """``client.sandboxes``: create, find and reconnect to sandboxes."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _send(self, request: Request[T]) -> T:
        try:
            response = self._client._http.request(
                request.method, request.path, json=request.json, content=request.content,
                params=request.params,
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return request.parse(response)

    def _events(self, path: str, after: int) -> Iterator[Event]:
        decoder = SSEDecoder(parse_sandbox_event)
        try:
            with self._client._http.stream(**stream_request(path, after)) as response:
                if not response.is_success:
                    response.read()
                    check(response)
                for line in response.iter_lines():
                    if (event := decoder.feed(line)) is not None:
                        yield event
                        if is_last(event):
                            return
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    def create(
        self,
        *,
        timeout_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
        limits: Mapping[str, Any] | None = None,
        network: bool = False,
    ) -> Sandbox:
        return Sandbox(self, self._send(create_request(timeout_s, metadata, limits, network)))

    def connect(self, sandbox_id: str) -> Sandbox:
        """The sandbox with this id (from any client); NotFoundError if there is none."""
        return Sandbox(self, self._send(Calls(sandbox_id).info()))

    def list(
        self, *, metadata: Mapping[str, str] | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[SandboxInfo]:  # fmt: skip
        return self._send(list_request(metadata, status, limit))


class Sandbox:
    """A sandbox: ``files``, ``commands``, builds and preview URLs."""

    def __init__(self, api: Sandboxes, info: SandboxInfo) -> None:
        self._api, self._calls = api, Calls(info.id)
        self.info = info
        self.id = info.id
        self.files = SandboxFiles(api, self._calls)
        self.commands = SandboxCommands(api, self._calls)

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} {self.info.status.value}>"

    def refresh(self) -> SandboxInfo:
        self.info = self._api._send(self._calls.info())
        return self.info

    def set_timeout(self, timeout_s: float) -> SandboxInfo:
        """The sandbox now expires ``timeout_s`` seconds from now."""
        self.info = self._api._send(self._calls.set_timeout(timeout_s))
        return self.info

    def kill(self) -> SandboxInfo:
        """Ends the sandbox: every process, and its files."""
        self.info = self._api._send(self._calls.kill())
        return self.info

    def get_preview_url(self, port: int) -> str:
        return preview_url(self._api._client._config.base_url, self.id, port)

    def build(
        self,
        files: Sequence[SourceFile | Mapping[str, str]] = (),
        *,
        install: Sequence[str] | str | None = None,
        check: Sequence[str] | str | None = None,
        start: StartSpec | Mapping[str, Any] | None = None,
        on_event: Callable[[Event], Any] | None = None,
        wait: bool = True,
    ) -> BuildInfo:
        """Builds a version of the app; waits for ready or failed unless ``wait=False``."""
        build = self._api._send(self._calls.build(build_body(files, install, check, start)))
        if not wait:
            return build
        for event in self._api._events(self._calls.build_events(build.id), 0):
            if on_event is not None:
                on_event(event)
        return self.get_build(build.id)

    def get_build(self, build_id: str) -> BuildInfo:
        return self._api._send(self._calls.get_build(build_id))


class SandboxFiles:
    def __init__(self, api: Sandboxes, calls: Calls) -> None:
        self._api, self._calls = api, calls

    def write(self, path: str, data: bytes | str) -> None:
        self._api._send(self._calls.write(path, data))

    def read(self, path: str) -> bytes:
        return self._api._send(self._calls.read(path))

    def read_text(self, path: str) -> str:
        return self.read(path).decode()

    def list(self, path: str = "") -> list[FileEntry]:
        """Every entry of the directory, page after page."""
        entries, cursor = self._api._send(self._calls.list_files(path, None))
        while cursor is not None:
            page, cursor = self._api._send(self._calls.list_files(path, cursor))
            entries += page
        return entries

    def remove(self, path: str) -> None:
        self._api._send(self._calls.remove(path))


class SandboxCommands:
    def __init__(self, api: Sandboxes, calls: Calls) -> None:
        self._api, self._calls = api, calls

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        background: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        **options: Unpack[RunOptions],
    ) -> CommandInfo | CommandHandle:
        """Foreground: the finished command (``.result`` is its Stage), its output
        passed to ``on_stdout``/``on_stderr`` as it comes. Background: a
        ``CommandHandle`` at once. Options: cwd, env, stdin, timeout_s."""
        streamed = not background and (on_stdout is not None or on_stderr is not None)
        info = self._api._send(self._calls.run(cmd, background, streamed, options))
        if not (background or streamed):
            return info
        handle = CommandHandle(self._api, info)
        return handle.wait(on_stdout=on_stdout, on_stderr=on_stderr) if streamed else handle

    def get(self, command_id: str) -> CommandHandle:
        return CommandHandle(self._api, self._api._send(self._calls.command(command_id)))

    def list(self) -> list[CommandInfo]:
        return self._api._send(self._calls.commands())


class CommandHandle:
    """A running (or finished) command: its output, stdin, and its end."""

    def __init__(self, api: Sandboxes, info: CommandInfo) -> None:
        self._api, self._calls = api, CommandCalls(info)
        self.info = info
        self.id = info.id

    def events(self, after: int = 0) -> Iterator[Event]:
        """Its output from the start (or after event ``after``), then ``CommandExit``."""
        for event in self._api._events(self._calls.events(), after):
            if isinstance(event, CommandExit):
                self.info = event.command
            yield event

    def wait(
        self, *, on_stdout: OutputHandler | None = None, on_stderr: OutputHandler | None = None
    ) -> CommandInfo:
        for event in self.events():
            deliver(event, on_stdout, on_stderr)
        return self.info

    def send_stdin(self, data: str, *, close: bool = False) -> None:
        self._api._send(self._calls.stdin(data, close))

    def kill(self) -> CommandInfo:
        self.info = self._api._send(self._calls.kill())
        return self.info


# -- asyncio ---------------------------------------------------------------------------


class AsyncSandboxes:
    """``async_client.sandboxes``: the asyncio twin of ``AsyncSandboxes``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def _send(self, request: Request[T]) -> T:
        try:
            response = await self._client._http.request(
                request.method, request.path, json=request.json, content=request.content,
                params=request.params,
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return request.parse(response)

    async def _events(self, path: str, after: int) -> AsyncIterator[Event]:
        decoder = SSEDecoder(parse_sandbox_event)
        try:
            async with self._client._http.stream(**stream_request(path, after)) as response:
                if not response.is_success:
                    await response.aread()
                    check(response)
                async for line in response.aiter_lines():
                    if (event := decoder.feed(line)) is not None:
                        yield event
                        if is_last(event):
                            return
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    async def create(
        self,
        *,
        timeout_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
        limits: Mapping[str, Any] | None = None,
        network: bool = False,
    ) -> AsyncSandbox:
        return AsyncSandbox(
            self, await self._send(create_request(timeout_s, metadata, limits, network))
        )

    async def connect(self, sandbox_id: str) -> AsyncSandbox:
        """The sandbox with this id (from any client); NotFoundError if there is none."""
        return AsyncSandbox(self, await self._send(Calls(sandbox_id).info()))

    async def list(
        self, *, metadata: Mapping[str, str] | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[SandboxInfo]:  # fmt: skip
        return await self._send(list_request(metadata, status, limit))


class AsyncSandbox:
    """A sandbox: ``files``, ``commands``, builds and preview URLs."""

    def __init__(self, api: AsyncSandboxes, info: SandboxInfo) -> None:
        self._api, self._calls = api, Calls(info.id)
        self.info = info
        self.id = info.id
        self.files = AsyncSandboxFiles(api, self._calls)
        self.commands = AsyncSandboxCommands(api, self._calls)

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id} {self.info.status.value}>"

    async def refresh(self) -> SandboxInfo:
        self.info = await self._api._send(self._calls.info())
        return self.info

    async def set_timeout(self, timeout_s: float) -> SandboxInfo:
        """The sandbox now expires ``timeout_s`` seconds from now."""
        self.info = await self._api._send(self._calls.set_timeout(timeout_s))
        return self.info

    async def kill(self) -> SandboxInfo:
        """Ends the sandbox: every process, and its files."""
        self.info = await self._api._send(self._calls.kill())
        return self.info

    def get_preview_url(self, port: int) -> str:
        return preview_url(self._api._client._config.base_url, self.id, port)

    async def build(
        self,
        files: Sequence[SourceFile | Mapping[str, str]] = (),
        *,
        install: Sequence[str] | str | None = None,
        check: Sequence[str] | str | None = None,
        start: StartSpec | Mapping[str, Any] | None = None,
        on_event: Callable[[Event], Any] | None = None,
        wait: bool = True,
    ) -> BuildInfo:
        """Builds a version of the app; waits for ready or failed unless ``wait=False``."""
        build = await self._api._send(self._calls.build(build_body(files, install, check, start)))
        if not wait:
            return build
        async for event in self._api._events(self._calls.build_events(build.id), 0):
            if on_event is not None:
                on_event(event)
        return await self.get_build(build.id)

    async def get_build(self, build_id: str) -> BuildInfo:
        return await self._api._send(self._calls.get_build(build_id))


class AsyncSandboxFiles:
    def __init__(self, api: AsyncSandboxes, calls: Calls) -> None:
        self._api, self._calls = api, calls

    async def write(self, path: str, data: bytes | str) -> None:
        await self._api._send(self._calls.write(path, data))

    async def read(self, path: str) -> bytes:
        return await self._api._send(self._calls.read(path))

    async def read_text(self, path: str) -> str:
        return (await self.read(path)).decode()

    async def list(self, path: str = "") -> list[FileEntry]:
        """Every entry of the directory, page after page."""
        entries, cursor = await self._api._send(self._calls.list_files(path, None))
        while cursor is not None:
            page, cursor = await self._api._send(self._calls.list_files(path, cursor))
            entries += page
        return entries

    async def remove(self, path: str) -> None:
        await self._api._send(self._calls.remove(path))


class AsyncSandboxCommands:
    def __init__(self, api: AsyncSandboxes, calls: Calls) -> None:
        self._api, self._calls = api, calls

    async def run(
        self,
        cmd: Sequence[str] | str,
        *,
        background: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        **options: Unpack[RunOptions],
    ) -> CommandInfo | AsyncCommandHandle:
        """Foreground: the finished command (``.result`` is its Stage), its output
        passed to ``on_stdout``/``on_stderr`` as it comes. Background: a
        ``AsyncCommandHandle`` at once. Options: cwd, env, stdin, timeout_s."""
        streamed = not background and (on_stdout is not None or on_stderr is not None)
        info = await self._api._send(self._calls.run(cmd, background, streamed, options))
        if not (background or streamed):
            return info
        handle = AsyncCommandHandle(self._api, info)
        return await handle.wait(on_stdout=on_stdout, on_stderr=on_stderr) if streamed else handle

    async def get(self, command_id: str) -> AsyncCommandHandle:
        return AsyncCommandHandle(self._api, await self._api._send(self._calls.command(command_id)))

    async def list(self) -> list[CommandInfo]:
        return await self._api._send(self._calls.commands())


class AsyncCommandHandle:
    """A running (or finished) command: its output, stdin, and its end."""

    def __init__(self, api: AsyncSandboxes, info: CommandInfo) -> None:
        self._api, self._calls = api, CommandCalls(info)
        self.info = info
        self.id = info.id

    async def events(self, after: int = 0) -> AsyncIterator[Event]:
        """Its output from the start (or after event ``after``), then ``CommandExit``."""
        async for event in self._api._events(self._calls.events(), after):
            if isinstance(event, CommandExit):
                self.info = event.command
            yield event

    async def wait(
        self, *, on_stdout: OutputHandler | None = None, on_stderr: OutputHandler | None = None
    ) -> CommandInfo:
        async for event in self.events():
            deliver(event, on_stdout, on_stderr)
        return self.info

    async def send_stdin(self, data: str, *, close: bool = False) -> None:
        await self._api._send(self._calls.stdin(data, close))

    async def kill(self) -> CommandInfo:
        self.info = await self._api._send(self._calls.kill())
        return self.info
