"""An execution: files + language + limits → compile once → run once or per test.

The runner is language-aware and sandbox-agnostic in what it decides: which
argv to run, with which limits, and what the outcome means (verdicts, test
comparison). The sandbox decides nothing about languages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from execbox.config import Settings
from execbox.engine import (
    Command,
    Sandbox,
    SandboxError,
    SandboxResult,
    Workspace,
)
from execbox.languages import SELFTEST_EXPECTED, SELFTEST_STDIN, LanguageInfo, Languages
from execbox.models import (
    ExecutionRequest,
    ExecutionResult,
    LanguageRef,
    Limits,
    ResolvedLimits,
    Status,
    TestStage,
    Verdict,
)
from execbox.runner.plan import Plan, Planner, UnknownLanguage, sandbox_limits
from execbox.runner.results import outputs_match, stdin_bytes, to_stage, verdict_of


@dataclass(frozen=True)
class RunnerEvent:
    kind: Literal["stage", "stdout", "stderr"]
    stage: str  # "compiling" | "running" | "test N" for kind=stage; else compile | run | test N
    data: bytes = b""


EventCallback = Callable[[RunnerEvent], None]


class Runner:
    """Runs executions in a sandbox."""

    def __init__(self, sandbox: Sandbox, languages: Languages, settings: Settings) -> None:
        self.sandbox = sandbox
        self.table = languages
        self.settings = settings
        self.planner = Planner(languages, settings)

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

    def check(self, request: ExecutionRequest, *, local_toolchains: bool = True) -> None:
        """Raises InvalidRequest with what to fix. ``local_toolchains``: whether this
        process's own disk tells if a toolchain is installed (not on an API node of
        scale-out mode: its workers run the jobs)."""
        self.planner.plan(request, check_toolchain=local_toolchains)

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
        plan = self.planner.plan(request)
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
                if verdict_of(compiled) != Verdict.OK:
                    result.verdict = Verdict.COMPILE_ERROR
                    return result
            env = {**lang.env, **request.env}
            if request.tests:
                result.tests = []
                for number, test in enumerate(request.tests, start=1):
                    name = f"test {number}"
                    emit(RunnerEvent("stage", name))
                    ran = await self._stage(
                        ws, plan, lang.run, plan.run_limits, name, emit, stdin_bytes(test.stdin),
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
                    stdin if stdin is not None else stdin_bytes(request.stdin or "")
                )
                ran = await self._stage(
                    ws, plan, lang.run, plan.run_limits, "run", emit, feed, env,
                    args=request.args, network=request.network,
                )  # fmt: skip
                result.run = to_stage(ran)
                result.verdict = verdict_of(ran)
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
