"""Every request of a persistent sandbox, its files, commands and builds, and the
events of their streams."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import httpx

from execbox.client._events import Event, EventObserver, EventStream, OutputEvent, stream_request
from execbox.client._events import parse_event as parse_execution_event
from execbox.client._request import Request, content, model, models, nothing
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

OutputHandler = Callable[[str], Any]
# A foreground command streamed to callbacks runs as a background one with this
# timeout unless told otherwise: the server's own foreground default.
STREAMED_TIMEOUT_S = 60.0
FINAL_BUILD = (BuildStatus.READY, BuildStatus.FAILED)
SANDBOXES = "/v1/sandboxes"


class RunOptions(TypedDict, total=False):
    """The options of a command besides what it runs and where its output goes."""

    cwd: str
    env: Mapping[str, str]
    stdin: str
    timeout_s: float


@dataclass(frozen=True, kw_only=True)
class CommandExit(Event):
    """A command ended: the last event of its stream."""

    command: CommandInfo


@dataclass(frozen=True, kw_only=True)
class BuildUpdate(Event):
    """A build changed (a step began or ended); ``build.status`` says where it is."""

    build: BuildInfo


def parse_event(kind: str, data: dict[str, Any], seq: int | None) -> Event | None:
    if kind == "exit":
        return CommandExit(seq=seq, command=CommandInfo.model_validate(data))
    if kind == "build":
        return BuildUpdate(seq=seq, build=BuildInfo.model_validate(data))
    if kind == "output":  # a build step's output
        stream: Literal["stdout", "stderr"] = (
            "stderr" if data.get("stream") == "stderr" else "stdout"
        )
        return OutputEvent(seq=seq, stream=stream, text=data["data"], stage=data.get("step"))
    return parse_execution_event(kind, data, seq)


def is_last(event: Event) -> bool:
    if isinstance(event, BuildUpdate):
        return event.build.status in FINAL_BUILD
    return isinstance(event, CommandExit)


def events_request(path: str, after: int, observe: EventObserver | None) -> Request[EventStream]:
    return stream_request(path, after, last=is_last, parse=parse_event, observe=observe)


def delivering(on_stdout: OutputHandler | None, on_stderr: OutputHandler | None) -> EventObserver:
    """An observer that hands each output's text to its stream's handler."""

    def deliver(event: Event) -> None:
        if isinstance(event, OutputEvent):
            handler = on_stdout if event.stream == "stdout" else on_stderr
            if handler is not None:
                handler(event.text)

    return deliver


def sandbox_path(sandbox_id: str, *rest: str) -> str:
    return "/".join([SANDBOXES, sandbox_id, *rest])


def create_request(
    timeout_s: float | None,
    metadata: Mapping[str, str] | None,
    limits: Mapping[str, Any] | None,
    network: bool,
) -> Request[SandboxInfo]:
    body = SandboxCreate.model_validate(
        {
            "timeout_s": timeout_s,
            "metadata": metadata or {},
            "limits": limits or {},
            "network": network,
        }
    )
    return Request("POST", SANDBOXES, model(SandboxInfo), json=body.model_dump(mode="json"))


def list_request(
    metadata: Mapping[str, str] | None, status: str | None, limit: int
) -> Request[list[SandboxInfo]]:
    params = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
    params["limit"] = str(limit)
    if status:
        params["status"] = status
    return Request("GET", SANDBOXES, models(SandboxInfo), params=params)


def _argv(cmd: Sequence[str] | str | None) -> list[str] | str | None:
    return cmd if cmd is None or isinstance(cmd, str) else list(cmd)


def build_body(
    files: Sequence[SourceFile | Mapping[str, str]],
    install: Sequence[str] | str | None,
    check: Sequence[str] | str | None,
    start: StartSpec | Mapping[str, Any] | None,
) -> dict[str, Any]:
    body = BuildCreate.model_validate(
        {"files": list(files), "install": _argv(install), "check": _argv(check), "start": start}
    )
    return body.model_dump(mode="json", exclude_none=True)


class SandboxRequests:
    """The requests of one sandbox."""

    def __init__(self, sandbox_id: str) -> None:
        self.id = sandbox_id

    def info(self) -> Request[SandboxInfo]:
        return Request("GET", sandbox_path(self.id), model(SandboxInfo))

    def set_timeout(self, timeout_s: float) -> Request[SandboxInfo]:
        path = sandbox_path(self.id, "timeout")
        return Request("POST", path, model(SandboxInfo), json={"timeout_s": timeout_s})

    def kill(self) -> Request[SandboxInfo]:
        return Request("DELETE", sandbox_path(self.id), model(SandboxInfo))

    def build(self, body: dict[str, Any]) -> Request[BuildInfo]:
        return Request("POST", sandbox_path(self.id, "builds"), model(BuildInfo), json=body)

    def get_build(self, build_id: str) -> Request[BuildInfo]:
        return Request("GET", sandbox_path(self.id, "builds", build_id), model(BuildInfo))

    def build_events(self, build_id: str, observe: EventObserver | None) -> Request[EventStream]:
        return events_request(sandbox_path(self.id, "builds", build_id, "events"), 0, observe)

    def write(self, path: str, data: bytes | str) -> Request[None]:
        body = data.encode() if isinstance(data, str) else data
        return Request("PUT", sandbox_path(self.id, "files", path), nothing, content=body)

    def read(self, path: str) -> Request[bytes]:
        return Request("GET", sandbox_path(self.id, "files", path), content)

    def list_files(self, path: str, cursor: str | None = None) -> Request[FilePage]:
        """A page of the directory's entries (the server pages long listings)."""
        params = {"path": path} if cursor is None else {"path": path, "cursor": cursor}
        return Request("GET", sandbox_path(self.id, "files"), _file_page, params=params)

    def remove(self, path: str) -> Request[None]:
        return Request("DELETE", sandbox_path(self.id, "files", path), nothing)

    def run(
        self, cmd: Sequence[str] | str, background: bool, streamed: bool, options: RunOptions
    ) -> Request[CommandInfo]:
        """A foreground command streamed to callbacks runs as a background one (its
        output then comes over SSE), with the foreground's default timeout."""
        timeout_s = options.get("timeout_s")
        if streamed and timeout_s is None:
            timeout_s = STREAMED_TIMEOUT_S
        command = CommandCreate(
            cmd=cmd if isinstance(cmd, str) else list(cmd),
            background=background or streamed,
            cwd=options.get("cwd"),
            env=dict(options.get("env") or {}),
            stdin=options.get("stdin"),
            timeout_s=timeout_s,
        )
        body = command.model_dump(mode="json", exclude_none=True)
        return Request("POST", sandbox_path(self.id, "commands"), model(CommandInfo), json=body)

    def command(self, command_id: str) -> Request[CommandInfo]:
        return Request("GET", sandbox_path(self.id, "commands", command_id), model(CommandInfo))

    def commands(self) -> Request[list[CommandInfo]]:
        return Request("GET", sandbox_path(self.id, "commands"), models(CommandInfo))


class CommandRequests:
    """The requests of one command of a sandbox."""

    def __init__(self, info: CommandInfo) -> None:
        self.path = sandbox_path(info.sandbox_id, "commands", info.id)

    def events(self, after: int, observe: EventObserver) -> Request[EventStream]:
        return events_request(self.path + "/events", after, observe)

    def stdin(self, data: str, close: bool) -> Request[None]:
        body = {"data": data, "close": close}
        return Request("POST", self.path + "/stdin", nothing, json=body)

    def kill(self) -> Request[CommandInfo]:
        return Request("DELETE", self.path, model(CommandInfo))


# A page of a directory listing, and the cursor of the next one (None at the end).
FilePage = tuple[list[FileEntry], str | None]
_file_entries = models(FileEntry)


def _file_page(response: httpx.Response) -> FilePage:
    return _file_entries(response), response.headers.get("x-next-cursor")
