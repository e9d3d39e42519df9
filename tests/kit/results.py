"""Running a program through the real runner, and reading its result in assertions."""

from __future__ import annotations

import json
from typing import Any

from execbox.models import ExecutionRequest, ExecutionResult, Stage
from execbox.runner import Runner


async def execute(runner: Runner, language: str, code: str, **fields: Any) -> ExecutionResult:
    """Runs ``code`` through the real runner."""
    return await runner.execute(ExecutionRequest(language=language, code=code, **fields))


def run_stage(result: ExecutionResult) -> Stage:
    """The run stage, failing with the whole result when there is none."""
    assert result.run is not None, describe(result)
    return result.run


def stdout(result: ExecutionResult) -> str:
    return run_stage(result).stdout


def describe(result: ExecutionResult) -> str:
    """A short account of a result, for assertion messages."""

    def stage(s: Stage | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {
            "verdict": s.verdict,
            "exit": s.exit_code,
            "signal": s.signal,
            "cpu_ms": s.cpu_time_ms,
            "wall_ms": s.wall_time_ms,
            "mem_kb": s.memory_kb,
            "stdout": s.stdout[:400],
            "stderr": s.stderr[-800:],
            "message": s.message,
        }

    return json.dumps(
        {
            "verdict": result.verdict,
            "compile": stage(result.compile),
            "run": stage(result.run),
            "tests": [stage(t) for t in result.tests or []],
            "error": result.error.model_dump() if result.error else None,
        },
        indent=1,
        default=str,
    )


def json_lines(text: str) -> dict[str, Any]:
    """The last line of a program's stdout, parsed as JSON."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, f"no output: {text!r}"
    value: dict[str, Any] = json.loads(lines[-1])
    return value
