"""An execution: files + language + limits → compile once → run once or per test.

The runner is language-aware and sandbox-agnostic in what it decides: which
argv to run, with which limits, and what the outcome means (verdicts, test
comparison). The sandbox decides nothing about languages.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from execbox.config import Settings
from execbox.languages import SELFTEST_EXPECTED, SELFTEST_STDIN, Language, LanguageInfo, Languages
from execbox.models import (
    ExecutionRequest,
    ExecutionResult,
    LanguageRef,
    Limits,
    ResolvedLimits,
    Stage,
    Status,
    TestStage,
    Verdict,
)
from execbox.sandbox import (
    Command,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    Workspace,
    WorkspacePathError,
)
from execbox.sandbox.workspace import split_path

MAX_SOURCE_BYTES = 8 << 20
# argv + environment of one program: above this execve fails anyway (E2BIG), and far above
# it the sandbox cannot even take the command (execbox-init reads at most 4 MiB).
MAX_ARGS_ENV_BYTES = 1 << 20


class InvalidRequest(ValueError):
    """The request cannot run as asked; the message says what to change."""


class UnknownLanguage(InvalidRequest):
    pass


@dataclass(frozen=True)
class RunnerEvent:
    kind: Literal["stage", "stdout", "stderr"]
    stage: str  # "compiling" | "running" | "test N" for kind=stage; else compile | run | test N
    data: bytes = b""


EventCallback = Callable[[RunnerEvent], None]


def outputs_match(actual: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""

    def norm(text: str) -> list[str]:
        lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    return norm(actual) == norm(expected)


def _bytes(text: str) -> bytes:
    """Text to bytes; lone surrogates (a client's raw bytes) come back as those bytes."""
    return text.encode(errors="surrogateescape")


def _text(data: bytes) -> tuple[str, str | None]:
    """Text for JSON, plus the exact bytes in base64 when they are not UTF-8."""
    try:
        return data.decode(), None
    except UnicodeDecodeError:
        return data.decode(errors="replace"), base64.b64encode(data).decode()


def to_stage(result: SandboxResult, stage_cls: type[Stage] = Stage, **extra: object) -> Stage:
    stdout, stdout_b64 = _text(result.stdout)
    stderr, stderr_b64 = _text(result.stderr)
    return stage_cls(
        stdout=stdout,
        stderr=stderr,
        stdout_base64=stdout_b64,
        stderr_base64=stderr_b64,
        exit_code=result.exit_code,
        signal=result.signal,
        verdict=result.verdict,
        wall_time_ms=round(result.wall_time_s * 1000, 3),
        cpu_time_ms=round(result.cpu_time_s * 1000, 3),
        memory_kb=result.memory_bytes // 1024,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        message=result.message,
        **extra,
    )


@dataclass(frozen=True)
class Plan:
    """A request checked and resolved against the language table."""

    language: Language
    files: list[tuple[str, bytes]]
    main: str
    entry: str | None
    run_limits: ResolvedLimits
    compile_limits: ResolvedLimits

    def argv(self, template: tuple[str, ...], limits: ResolvedLimits) -> list[str]:
        sources = [p for p, _ in self.files if self.language.is_source(p)]
        argv: list[str] = []
        for part in template:
            if part == "{sources}":
                argv += sources or [self.main]
            else:
                argv.append(
                    part.replace("{source}", self.main)
                    .replace("{entry}", self.entry or "")
                    .replace("{memory_mb}", str(limits.memory_mb))
                )
        return argv


def sandbox_limits(limits: ResolvedLimits) -> SandboxLimits:
    return SandboxLimits(
        cpu_time_s=limits.cpu_time_s,
        wall_time_s=limits.wall_time_s,
        memory_bytes=limits.memory_mb << 20,
        processes=limits.processes,
        output_bytes=limits.output_kb << 10,
        file_size_bytes=limits.file_size_kb << 10,
    )


class Runner:
    """Runs executions in a sandbox."""

    def __init__(self, sandbox: Sandbox, languages: Languages, settings: Settings) -> None:
        self.sandbox = sandbox
        self.table = languages
        self.settings = settings
        self._default_limits: dict[tuple[str, bool], ResolvedLimits] = {}

    @classmethod
    async def create(cls, settings: Settings) -> Runner:
        languages = Languages.load()
        sandbox = Sandbox(settings, extra_ro_paths=languages.extra_ro_paths())
        await languages.probe_versions()
        await sandbox.warm_up()
        return cls(sandbox, languages, settings)

    async def close(self) -> None:
        await self.sandbox.close()

    def languages(self) -> list[LanguageInfo]:
        return self.table.info()

    # -- checking ------------------------------------------------------------

    def _language(self, request: ExecutionRequest) -> Language:
        lang = self.table.get(request.language)
        if lang is None:
            raise UnknownLanguage(
                f"unknown language {request.language!r}; supported: "
                + ", ".join(self.table.names())
            )
        missing = lang.missing_toolchain()
        if missing:
            raise InvalidRequest(f"the toolchain is not installed on this server: {missing}")
        installed = self.table.versions.get(lang.name)
        if request.version and installed and not installed.startswith(request.version):
            raise InvalidRequest(
                f"{lang.name} {request.version} is not available; this server has {installed}"
            )
        return lang

    def resolve_limits(self, asked: Limits, lang_default: Limits, base: Limits) -> ResolvedLimits:
        merged = asked.merged_over(lang_default.merged_over(base))
        s = self.settings
        maxima = {
            "cpu_time_s": s.max_cpu_time_s,
            "wall_time_s": s.max_wall_time_s,
            "memory_mb": s.max_memory_mb,
            "processes": s.max_processes,
            "output_kb": s.max_output_kb,
            "file_size_kb": s.max_file_size_kb,
            "disk_mb": s.max_disk_mb,
        }
        too_big = [
            f"{key} = {getattr(asked, key)} (at most {cap})"
            for key, cap in maxima.items()
            if getattr(asked, key) is not None and getattr(asked, key) > cap
        ]
        if too_big:
            raise InvalidRequest("limits above this server's maxima: " + ", ".join(too_big))
        # Defaults never exceed the admin's maxima either.
        values = {k: min(v, maxima[k]) for k, v in merged.model_dump().items()}
        return ResolvedLimits(**values)

    def _stage_limits(
        self, lang: Language, asked: Limits, *, compile_stage: bool
    ) -> ResolvedLimits:
        """The limits of a language's stage; its defaults (what most requests ask for)
        are resolved once, as every request is planned twice (accepted, then run)."""
        default, base = (
            (lang.compile_limits, self.table.compile_limits)
            if compile_stage
            else (lang.limits, self.table.limits)
        )
        if asked.model_fields_set:
            return self.resolve_limits(asked, default, base)
        key = (lang.name, compile_stage)
        if key not in self._default_limits:
            self._default_limits[key] = self.resolve_limits(asked, default, base)
        return self._default_limits[key]

    def plan(self, request: ExecutionRequest) -> Plan:
        """Checks a request; raises InvalidRequest with what to fix."""
        lang = self._language(request)
        if request.network and not self.settings.allow_network:
            raise InvalidRequest("network access is disabled on this server")
        sources: list[tuple[str | None, bytes]] = (
            [(f.path, f.data()) for f in request.files]
            if request.files
            else [(None, (request.code or "").encode())]
        )
        entry = lang.entry_point(sources[0][1].decode(errors="replace"))
        files: list[tuple[str, bytes]] = []
        total = 0
        for i, (given_path, data) in enumerate(sources):
            path = given_path or lang.source_name(entry)
            try:
                parts = split_path(path)
            except WorkspacePathError as exc:
                raise InvalidRequest(f"file path {path!r}: {exc}") from exc
            if not parts:
                raise InvalidRequest(f"file path {path!r} names no file")
            if (i == 0 or lang.is_source(path)) and any(p.startswith(("-", "@")) for p in parts):
                # Compilers would take it for an option or a response file (gcc, javac and
                # rustc read "@file"; gcc's cc1 even gets the bare file name).
                raise InvalidRequest(
                    f"file path {path!r}: a source file's path may not have a part that "
                    "starts with '-' or '@'; rename it"
                )
            total += len(data)
            if i == 0 and not data.strip():
                raise InvalidRequest("the program is empty")
            files.append(("/".join(parts), data))
        if total > MAX_SOURCE_BYTES:
            raise InvalidRequest(f"sources total {total} bytes; at most {MAX_SOURCE_BYTES}")
        arg_bytes = sum(len(a.encode()) + 1 for a in request.args) + sum(
            len(k.encode()) + len(v.encode()) + 2 for k, v in request.env.items()
        )
        if arg_bytes > MAX_ARGS_ENV_BYTES:
            raise InvalidRequest(
                f"args and env total {arg_bytes} bytes; at most {MAX_ARGS_ENV_BYTES}"
            )
        if len({p for p, _ in files}) != len(files):
            raise InvalidRequest("two files have the same path")
        return Plan(
            language=lang,
            files=files,
            main=files[0][0],
            entry=entry,
            run_limits=self._stage_limits(lang, request.limits, compile_stage=False),
            compile_limits=self._stage_limits(lang, request.compile_limits, compile_stage=True),
        )

    def check(self, request: ExecutionRequest) -> None:
        self.plan(request)

    # -- running ---------------------------------------------------------------

    async def execute(
        self,
        request: ExecutionRequest,
        *,
        on_event: EventCallback | None = None,
        stdin: AsyncIterator[bytes] | None = None,
    ) -> ExecutionResult:
        """Runs a request to its verdict. Raises InvalidRequest before running anything,
        SandboxError when the host fails; cancelling kills the sandbox at once."""
        plan = self.plan(request)
        lang = plan.language
        emit = on_event or (lambda event: None)
        result = ExecutionResult(
            status=Status.COMPLETED,
            language=LanguageRef(name=lang.name, version=self.table.versions.get(lang.name)),
        )
        disk_mb = max(plan.run_limits.disk_mb, plan.compile_limits.disk_mb if lang.compiled else 0)
        async with self.sandbox.workspace(disk_mb) as ws:
            for path, data in plan.files:
                ws.write_file(path, data)
            if lang.compile is not None:
                emit(RunnerEvent("stage", "compiling"))
                compiled = await self._stage(
                    ws, plan, lang.compile, plan.compile_limits, "compile", emit, b"",
                    {**lang.compile_env}, args=[],
                )  # fmt: skip
                result.compile = to_stage(compiled)
                if compiled.verdict != Verdict.OK:
                    result.verdict = Verdict.COMPILE_ERROR
                    return result
            env = {**lang.env, **request.env}
            if request.tests:
                result.tests = []
                for number, test in enumerate(request.tests, start=1):
                    name = f"test {number}"
                    emit(RunnerEvent("stage", name))
                    ran = await self._stage(
                        ws, plan, lang.run, plan.run_limits, name, emit, _bytes(test.stdin),
                        env, args=request.args,
                    )  # fmt: skip
                    stage = to_stage(ran, TestStage)
                    assert isinstance(stage, TestStage)
                    if stage.verdict == Verdict.OK and test.expected_output is not None:
                        if outputs_match(stage.stdout, test.expected_output):
                            stage.passed = True
                        else:
                            stage.verdict = Verdict.WRONG_ANSWER
                            stage.message = "output differs from expected_output"
                    else:
                        stage.passed = stage.verdict == Verdict.OK
                    result.tests.append(stage)
                failed = next((t for t in result.tests if t.verdict != Verdict.OK), None)
                result.verdict = failed.verdict if failed else Verdict.OK
            else:
                emit(RunnerEvent("stage", "running"))
                feed: bytes | AsyncIterator[bytes] = (
                    stdin if stdin is not None else _bytes(request.stdin or "")
                )
                ran = await self._stage(
                    ws, plan, lang.run, plan.run_limits, "run", emit, feed, env,
                    args=request.args, network=request.network,
                )  # fmt: skip
                result.run = to_stage(ran)
                result.verdict = ran.verdict
        return result

    async def _stage(
        self,
        ws: Workspace,
        plan: Plan,
        template: tuple[str, ...],
        limits: ResolvedLimits,
        name: str,
        emit: EventCallback,
        stdin: bytes | AsyncIterator[bytes],
        env: dict[str, str],
        *,
        args: list[str],
        network: bool = False,
    ) -> SandboxResult:
        command = Command(
            argv=[*plan.argv(template, limits), *args],
            env={**self.table.env, **env},
        )

        def forward(stream: str, data: bytes) -> None:
            emit(RunnerEvent("stdout" if stream == "stdout" else "stderr", name, data))

        return await self.sandbox.run(
            ws, command, sandbox_limits(limits), stdin=stdin, on_output=forward, network=network
        )

    # -- self checks -----------------------------------------------------------

    async def selftest(self, language: str) -> ExecutionResult:
        """Runs the language's hello + stdin echo program; verdict ok when it passed."""
        lang = self.table.get(language)
        if lang is None:
            raise UnknownLanguage(language)
        return await self.execute(
            ExecutionRequest(
                language=lang.name,
                code=lang.selftest.lstrip("\n"),
                tests=[{"stdin": SELFTEST_STDIN, "expected_output": SELFTEST_EXPECTED}],
            )
        )

    async def sandbox_check(self) -> None:
        """Raises SandboxError unless a trivial program runs correctly in the sandbox."""
        result = await self.execute(
            ExecutionRequest(language="bash", code="echo ok", limits=Limits(wall_time_s=10))
        )
        if result.verdict != Verdict.OK or result.run is None or result.run.stdout != "ok\n":
            raise SandboxError(f"sandbox self-check failed: {result.model_dump_json()}")
