"""Persistent sandboxes in the SDK: ``client.sandboxes``. Each handle is written
once (its requests in _sandbox_requests.py) and declared for both clients.

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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar, Unpack

from execbox.client._events import Event, EventStream
from execbox.client._flow import (
    AsyncHandle,
    AsyncTransport,
    Flow,
    Handle,
    SyncHandle,
    SyncTransport,
    TransportT,
    drain,
    event_stream,
    operation,
    send,
)
from execbox.client._request import Request
from execbox.client._sandbox_requests import (
    BuildUpdate,
    CommandExit,
    CommandRequests,
    OutputHandler,
    RunOptions,
    SandboxRequests,
    build_body,
    create_request,
    delivering,
    list_request,
    sandbox_path,
)
from execbox.models import SourceFile
from execbox.sandboxes.schemas import BuildInfo, CommandInfo, FileEntry, SandboxInfo, StartSpec

SandboxT = TypeVar("SandboxT", bound="SandboxCore[Any, Any, Any]")
FilesT = TypeVar("FilesT", bound="FilesCore[Any]")
CommandsT = TypeVar("CommandsT", bound="CommandsCore[Any, Any]")
CommandHandleT = TypeVar("CommandHandleT", bound="CommandHandleCore[Any]")

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncSandboxCommands",
    "AsyncSandboxFiles",
    "AsyncSandboxes",
    "BuildUpdate",
    "CommandExit",
    "CommandHandle",
    "OutputHandler",
    "RunOptions",
    "Sandbox",
    "SandboxCommands",
    "SandboxFiles",
    "Sandboxes",
]


class CommandHandleCore(Handle[TransportT]):
    """A running (or finished) command: its output, stdin, and its end."""

    def __init__(self, transport: TransportT, info: CommandInfo) -> None:
        super().__init__(transport)
        self._requests = CommandRequests(info)
        self.info = info
        self.id = info.id

    def _observe(self, event: Event) -> None:
        if isinstance(event, CommandExit):
            self.info = event.command

    def _events(self, after: int = 0) -> Request[EventStream]:
        """Its output from the start (or after event ``after``), then ``CommandExit``."""
        return self._requests.events(after, self._observe)

    events = event_stream(_events)

    @operation
    def wait(
        self, *, on_stdout: OutputHandler | None = None, on_stderr: OutputHandler | None = None
    ) -> Flow[CommandInfo]:
        """Follows the command to its end, its output to ``on_stdout``/``on_stderr``."""
        deliver = delivering(on_stdout, on_stderr)

        def observe(event: Event) -> None:
            self._observe(event)
            deliver(event)

        yield from drain(self._requests.events(0, observe))
        return self.info

    @operation
    def send_stdin(self, data: str, *, close: bool = False) -> Flow[None]:
        yield from send(self._requests.stdin(data, close))

    @operation
    def kill(self) -> Flow[CommandInfo]:
        self.info = yield from send(self._requests.kill())
        return self.info


class CommandsCore(Handle[TransportT], Generic[TransportT, CommandHandleT]):
    """``sandbox.commands``: run commands and find them again."""

    _handle: type[CommandHandleT]

    def __init__(self, transport: TransportT, requests: SandboxRequests) -> None:
        super().__init__(transport)
        self._requests = requests

    @operation
    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        background: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        **options: Unpack[RunOptions],
    ) -> Flow[CommandInfo | CommandHandleT]:
        """Foreground: the finished command (``.result`` is its Stage), its output
        passed to ``on_stdout``/``on_stderr`` as it comes. Background: a command
        handle at once. Options: cwd, env, stdin, timeout_s."""
        streamed = not background and (on_stdout is not None or on_stderr is not None)
        info = yield from send(self._requests.run(cmd, background, streamed, options))
        if not (background or streamed):
            return info
        handle = self._handle(self._transport, info)
        if streamed:
            wait = CommandHandleCore.wait.flow
            return (yield from wait(handle, on_stdout=on_stdout, on_stderr=on_stderr))
        return handle

    @operation
    def get(self, command_id: str) -> Flow[CommandHandleT]:
        return self._handle(self._transport, (yield from send(self._requests.command(command_id))))

    @operation
    def list(self) -> Flow[list[CommandInfo]]:
        return (yield from send(self._requests.commands()))


class FilesCore(Handle[TransportT]):
    """``sandbox.files``: read and write the sandbox's files."""

    def __init__(self, transport: TransportT, requests: SandboxRequests) -> None:
        super().__init__(transport)
        self._requests = requests

    @operation
    def write(self, path: str, data: bytes | str) -> Flow[None]:
        yield from send(self._requests.write(path, data))

    @operation
    def read(self, path: str) -> Flow[bytes]:
        return (yield from send(self._requests.read(path)))

    @operation
    def read_text(self, path: str) -> Flow[str]:
        return (yield from send(self._requests.read(path))).decode()

    @operation
    def list(self, path: str = "") -> Flow[list[FileEntry]]:
        """Every entry of the directory, page after page."""
        entries, cursor = yield from send(self._requests.list_files(path))
        while cursor is not None:
            page, cursor = yield from send(self._requests.list_files(path, cursor))
            entries += page
        return entries

    @operation
    def remove(self, path: str) -> Flow[None]:
        yield from send(self._requests.remove(path))


class SandboxCore(Handle[TransportT], Generic[TransportT, FilesT, CommandsT]):
    """A sandbox: ``files``, ``commands``, builds and preview URLs."""

    _files: type[FilesT]
    _commands: type[CommandsT]

    def __init__(self, transport: TransportT, base_url: str, info: SandboxInfo) -> None:
        super().__init__(transport)
        self._base_url = base_url
        self._requests = SandboxRequests(info.id)
        self.info = info
        self.id = info.id
        self.files = self._files(transport, self._requests)
        self.commands = self._commands(transport, self._requests)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.info.status.value}>"

    @operation
    def refresh(self) -> Flow[SandboxInfo]:
        self.info = yield from send(self._requests.info())
        return self.info

    @operation
    def set_timeout(self, timeout_s: float) -> Flow[SandboxInfo]:
        """The sandbox now expires ``timeout_s`` seconds from now."""
        self.info = yield from send(self._requests.set_timeout(timeout_s))
        return self.info

    @operation
    def kill(self) -> Flow[SandboxInfo]:
        """Ends the sandbox: every process, and its files."""
        self.info = yield from send(self._requests.kill())
        return self.info

    def get_preview_url(self, port: int) -> str:
        return f"{self._base_url}{sandbox_path(self.id, 'ports', str(port))}/"

    @operation
    def build(
        self,
        files: Sequence[SourceFile | Mapping[str, str]] = (),
        *,
        install: Sequence[str] | str | None = None,
        check: Sequence[str] | str | None = None,
        start: StartSpec | Mapping[str, Any] | None = None,
        on_event: Callable[[Event], Any] | None = None,
        wait: bool = True,
    ) -> Flow[BuildInfo]:
        """Builds a version of the app; waits for ready or failed unless ``wait=False``."""
        body = build_body(files, install, check, start)
        build = yield from send(self._requests.build(body))
        if not wait:
            return build
        yield from drain(self._requests.build_events(build.id, on_event))
        return (yield from send(self._requests.get_build(build.id)))

    @operation
    def get_build(self, build_id: str) -> Flow[BuildInfo]:
        return (yield from send(self._requests.get_build(build_id)))


class SandboxesCore(Handle[TransportT], Generic[TransportT, SandboxT]):
    """``client.sandboxes``: create, find and reconnect to sandboxes."""

    _sandbox: type[SandboxT]

    def __init__(self, transport: TransportT, base_url: str) -> None:
        super().__init__(transport)
        self._base_url = base_url

    def _handle(self, info: SandboxInfo) -> SandboxT:
        return self._sandbox(self._transport, self._base_url, info)

    @operation
    def create(
        self,
        *,
        timeout_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
        limits: Mapping[str, Any] | None = None,
        network: bool = False,
    ) -> Flow[SandboxT]:
        info = yield from send(create_request(timeout_s, metadata, limits, network))
        return self._handle(info)

    @operation
    def connect(self, sandbox_id: str) -> Flow[SandboxT]:
        """The sandbox with this id (from any client); NotFoundError if there is none."""
        return self._handle((yield from send(SandboxRequests(sandbox_id).info())))

    @operation
    def list(
        self,
        *,
        metadata: Mapping[str, str] | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> Flow[list[SandboxInfo]]:
        return (yield from send(list_request(metadata, status, limit)))


# Each handle declared for each client.


class CommandHandle(CommandHandleCore[SyncTransport], SyncHandle):
    """A command of a sandbox, on a Client: see CommandHandleCore."""


class AsyncCommandHandle(CommandHandleCore[AsyncTransport], AsyncHandle):
    """A command of a sandbox, on an AsyncClient: see CommandHandleCore."""


class SandboxCommands(CommandsCore[SyncTransport, CommandHandle], SyncHandle):
    """``sandbox.commands`` on a Client: see CommandsCore."""

    _handle = CommandHandle


class AsyncSandboxCommands(CommandsCore[AsyncTransport, AsyncCommandHandle], AsyncHandle):
    """``sandbox.commands`` on an AsyncClient: see CommandsCore."""

    _handle = AsyncCommandHandle


class SandboxFiles(FilesCore[SyncTransport], SyncHandle):
    """``sandbox.files`` on a Client: see FilesCore."""


class AsyncSandboxFiles(FilesCore[AsyncTransport], AsyncHandle):
    """``sandbox.files`` on an AsyncClient: see FilesCore."""


class Sandbox(SandboxCore[SyncTransport, SandboxFiles, SandboxCommands], SyncHandle):
    """A sandbox on a Client: see SandboxCore."""

    _files, _commands = SandboxFiles, SandboxCommands


class AsyncSandbox(
    SandboxCore[AsyncTransport, AsyncSandboxFiles, AsyncSandboxCommands], AsyncHandle
):
    """A sandbox on an AsyncClient: see SandboxCore."""

    _files, _commands = AsyncSandboxFiles, AsyncSandboxCommands


class Sandboxes(SandboxesCore[SyncTransport, Sandbox], SyncHandle):
    """``client.sandboxes`` on a Client: see SandboxesCore."""

    _sandbox = Sandbox


class AsyncSandboxes(SandboxesCore[AsyncTransport, AsyncSandbox], AsyncHandle):
    """``client.sandboxes`` on an AsyncClient: see SandboxesCore."""

    _sandbox = AsyncSandbox
