"""The public execution schemas (DESIGN.md §3): requests, limits, stages, results.

Shared by the runner, the CLI's ``--json``, the HTTP API and the SDK, so that a
result looks the same wherever it comes from.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from execbox.jobs.states import Status

MAX_FILES = 256
MAX_TESTS = 500


class Verdict(StrEnum):
    OK = "ok"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIME_LIMIT = "time_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    WRONG_ANSWER = "wrong_answer"
    INTERNAL_ERROR = "internal_error"


class Limits(BaseModel):
    """Resource limits of one stage. Every field is optional in a request; the
    language's and the server's defaults fill the rest."""

    model_config = ConfigDict(extra="forbid")

    cpu_time_s: float | None = Field(None, gt=0, description="CPU seconds, all threads summed")
    wall_time_s: float | None = Field(None, gt=0, description="Elapsed seconds")
    memory_mb: int | None = Field(None, gt=0, description="Memory including swap, MiB")
    processes: int | None = Field(None, gt=0, description="Processes and threads at once")
    output_kb: int | None = Field(None, gt=0, description="Cap on stdout and on stderr, KiB")
    file_size_kb: int | None = Field(None, gt=0, description="Largest file the program may write")
    disk_mb: int | None = Field(None, gt=0, description="Size of the private workspace, MiB")

    def merged_over(self, base: Limits) -> Limits:
        """These limits, with unset fields taken from ``base``."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


class ResolvedLimits(BaseModel):
    """Limits with every field set: what a stage actually runs under."""

    model_config = ConfigDict(frozen=True)  # the runner shares its resolved defaults

    cpu_time_s: float
    wall_time_s: float
    memory_mb: int
    processes: int
    output_kb: int
    file_size_kb: int
    disk_mb: int


class SourceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., min_length=1, max_length=255)
    content: str
    encoding: Literal["utf8", "base64"] = "utf8"

    @model_validator(mode="after")
    def _decodable(self) -> SourceFile:
        if self.encoding == "base64":
            try:
                base64.b64decode(self.content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"file {self.path!r}: content is not valid base64") from exc
        return self

    def data(self) -> bytes:
        if self.encoding == "base64":
            return base64.b64decode(self.content)
        return self.content.encode()


class TestCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stdin: str = ""
    expected_output: str | None = None


class ExecutionRequest(BaseModel):
    """What to run: one program, compiled once, run once or once per test."""

    model_config = ConfigDict(extra="forbid")

    language: str = Field(..., min_length=1, max_length=40, examples=["python"])
    version: str | None = None
    code: str | None = Field(None, description="Source of the main file")
    files: list[SourceFile] | None = Field(None, max_length=MAX_FILES)
    stdin: str | None = None
    args: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(default_factory=dict)
    tests: list[TestCase] | None = Field(None, max_length=MAX_TESTS)
    limits: Limits = Field(default_factory=Limits)
    compile_limits: Limits = Field(default_factory=Limits)
    network: bool = False
    callback_url: str | None = None

    @model_validator(mode="after")
    def _has_source(self) -> ExecutionRequest:
        if self.code is None and not self.files:
            raise ValueError("give the program as `code` or as `files`")
        if self.code is not None and self.files:
            raise ValueError("give either `code` or `files`, not both")
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ValueError(f"invalid environment variable name or value: {name!r}")
        return env

    @field_validator("args")
    @classmethod
    def _args_no_nul(cls, args: list[str]) -> list[str]:
        if any("\0" in arg for arg in args):
            raise ValueError("arguments may not contain NUL bytes")
        return args


class Stage(BaseModel):
    """What one sandboxed process did."""

    stdout: str = ""
    stderr: str = ""
    stdout_base64: str | None = Field(
        None, description="Set when stdout is not valid UTF-8: the exact bytes"
    )
    stderr_base64: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    verdict: Verdict
    wall_time_ms: float = 0
    cpu_time_ms: float = 0
    memory_kb: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    message: str | None = Field(None, description="Why the verdict, in words")


class TestStage(Stage):
    passed: bool = False


class LanguageRef(BaseModel):
    name: str
    version: str | None = None


class ErrorInfo(BaseModel):
    message: str
    debug_id: str


class ExecutionResult(BaseModel):
    id: str | None = None
    status: Status
    language: LanguageRef
    verdict: Verdict | None = None
    compile: Stage | None = None
    run: Stage | None = None
    tests: list[TestStage] | None = None
    error: ErrorInfo | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
