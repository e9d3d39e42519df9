"""What the engine reported, as the execution result's stages and test outcomes."""

from __future__ import annotations

import base64

from execbox.engine import Outcome, SandboxResult
from execbox.models import Stage, Verdict

# What each way a command can end means for the program (EXITED: by its exit code).
VERDICTS = {
    Outcome.SIGNALLED: Verdict.RUNTIME_ERROR,
    Outcome.KILLED: Verdict.RUNTIME_ERROR,
    Outcome.KILLED_FOR_TIME: Verdict.TIME_LIMIT,
    Outcome.KILLED_FOR_MEMORY: Verdict.MEMORY_LIMIT,
    Outcome.KILLED_FOR_OUTPUT: Verdict.OUTPUT_LIMIT,
    Outcome.UNREPORTED: Verdict.INTERNAL_ERROR,
}


def verdict_of(result: SandboxResult) -> Verdict:
    if result.outcome == Outcome.EXITED:
        return Verdict.OK if result.exit_code == 0 else Verdict.RUNTIME_ERROR
    return VERDICTS[result.outcome]


def outputs_match(actual: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""

    def norm(text: str) -> list[str]:
        lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    return norm(actual) == norm(expected)


def stdin_bytes(text: str) -> bytes:
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
        verdict=verdict_of(result),
        wall_time_ms=round(result.wall_time_s * 1000, 3),
        cpu_time_ms=round(result.cpu_time_s * 1000, 3),
        memory_kb=result.memory_bytes // 1024,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        message=result.message,
        **extra,
    )
