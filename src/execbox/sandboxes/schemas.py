"""The public schemas of persistent sandboxes (DESIGN.md §3, issue 6): shared by the
service, the HTTP API and the SDK."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from execbox.models import MAX_FILES, SourceFile, Stage

MAX_METADATA = 32


class SandboxStatus(StrEnum):
    RUNNING = "running"
    KILLED = "killed"  # deleted by a client
    EXPIRED = "expired"  # its timeout passed
    LOST = "lost"  # the server that ran it stopped; its processes ended with it
    FAILED = "failed"  # it ended on its own (e.g. its init was OOM-killed)


class SandboxLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_mb: int | None = Field(None, gt=0, description="Memory of all its processes, MiB")
    processes: int | None = Field(None, gt=0, description="Processes and threads at once")
    cpus: float | None = Field(None, gt=0, description="CPU share, in cores")
    disk_mb: int | None = Field(None, gt=0, description="Workspace quota, MiB")


class ResolvedSandboxLimits(BaseModel):
    memory_mb: int
    processes: int
    cpus: float
    disk_mb: int


class SandboxCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float | None = Field(None, gt=0, description="Lifetime; default 300 s")
    metadata: dict[str, str] = Field(default_factory=dict)
    limits: SandboxLimits = Field(default_factory=SandboxLimits)
    network: bool = Field(
        False,
        description="Network for build deps steps (if the server allows it); the "
        "sandbox's own commands and servers never have any",
    )

    @field_validator("metadata")
    @classmethod
    def _small(cls, metadata: dict[str, str]) -> dict[str, str]:
        if len(metadata) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} metadata entries")
        if any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
            raise ValueError("metadata keys are at most 64 characters, values 512")
        return metadata


class SandboxInfo(BaseModel):
    id: str
    status: SandboxStatus
    metadata: dict[str, str]
    limits: ResolvedSandboxLimits
    network: bool
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    build_version: int = Field(0, description="Version of the newest build (0: none)")
    preview_url: str | None = Field(None, description="The running app of the newest build")
    preview_token: str = Field(
        "",
        description="Opens preview URLs without an API key (browsers): once as "
        "`?execbox_preview_token=…`, then a cookie carries it; part of `preview_url` when "
        "the server has API keys",
    )


class TimeoutUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(..., gt=0, description="New lifetime, counted from now")


class FileEntry(BaseModel):
    name: str = Field(..., description="Bytes that are not UTF-8 show as U+FFFD")
    path: str
    type: str = Field(..., description="file | dir | symlink | other")
    size: int
    mtime: datetime
    name_base64: str | None = Field(
        None, description="The name's exact bytes, only when they are not UTF-8"
    )
    path_base64: str | None = Field(
        None,
        description="The path's exact bytes, only when they are not UTF-8 (percent-encode "
        "them to address the file)",
    )


class CommandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cmd: list[str] | str = Field(..., description="argv, or a shell command line for /bin/sh -c")
    cwd: str | None = Field(None, description="Directory inside /box")
    env: dict[str, str] = Field(default_factory=dict)
    stdin: str | None = Field(None, description="Given at once; closes stdin after it")
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Kills the command after this; foreground default 60 s, "
        "background: none (it ends with the sandbox)",
    )
    background: bool = Field(False, description="Answer at once with the command's id")

    @field_validator("cmd")
    @classmethod
    def _not_empty(cls, cmd: list[str] | str) -> list[str] | str:
        if not cmd or (isinstance(cmd, str) and not cmd.strip()):
            raise ValueError("cmd is empty")
        return cmd


class CommandStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"


class CommandInfo(BaseModel):
    id: str
    sandbox_id: str
    cmd: list[str]
    background: bool
    status: CommandStatus
    started_at: datetime
    finished_at: datetime | None = None
    result: Stage | None = Field(None, description="Once finished (the Stage schema)")


class StdinInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = ""
    encoding: str = Field("utf8", pattern="^(utf8|base64)$")
    close: bool = Field(False, description="Close stdin after the data")


class StartSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cmd: list[str] | str
    port: int = Field(..., ge=1024, le=65535)


class BuildCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[SourceFile] = Field(default_factory=list, max_length=MAX_FILES)
    install: list[str] | str | None = Field(None, description="Installs dependencies (deps)")
    check: list[str] | str | None = Field(None, description="Must exit 0 (checks)")
    start: StartSpec | None = Field(None, description="The app, which must listen on port")


class BuildStatus(StrEnum):
    QUEUED = "queued"
    SCAFFOLD = "scaffold"
    DEPS = "deps"
    CHECKS = "checks"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class BuildStep(BaseModel):
    name: str
    status: str = Field(..., description="running | ok | failed | skipped")
    started_at: datetime
    finished_at: datetime | None = None
    output_tail: str | None = None


class BuildError(BaseModel):
    step: str
    message: str = Field(..., description="What went wrong and what to do about it")
    output_tail: str | None = None
    debug_id: str


class BuildInfo(BaseModel):
    id: str
    sandbox_id: str
    build_version: int
    status: BuildStatus
    steps: list[BuildStep] = Field(default_factory=list)
    error: BuildError | None = None
    preview_url: str | None = None
    app_command_id: str | None = Field(None, description="The app's command: its logs")
    created_at: datetime
    finished_at: datetime | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
