"""Bad input: each is a clear error before anything runs, or a clean verdict; never a
crash, a hang or an internal error."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from execbox.models import ExecutionRequest, Verdict
from execbox.runner import InvalidRequest, Runner, UnknownLanguage
from execbox.runner.plan import MAX_SOURCE_BYTES
from kit.results import describe, execute, run_stage


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_unknown_language_names_the_supported_ones(runner: Runner) -> None:
    with pytest.raises(UnknownLanguage) as caught:
        await runner.execute(ExecutionRequest(language="cobol", code="DISPLAY 'HI'."))
    message = str(caught.value)
    assert "cobol" in message
    for name in runner.table.names():
        assert name in message


@pytest.mark.parametrize("code", ["", "   \n\t\n"])
def test_empty_source(runner: Runner, code: str) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        runner.planner.plan(ExecutionRequest(language="python", code=code))


def test_no_source_at_all() -> None:
    with pytest.raises(ValidationError, match="code"):
        ExecutionRequest(language="python")
    with pytest.raises(ValidationError, match="not both"):
        ExecutionRequest(
            language="python", code="print(1)", files=[{"path": "a.py", "content": "x"}]
        )


def test_huge_source(runner: Runner) -> None:
    code = "#" * (MAX_SOURCE_BYTES + 1)
    with pytest.raises(InvalidRequest, match=str(MAX_SOURCE_BYTES)):
        runner.planner.plan(ExecutionRequest(language="python", code=code))
    # Many files that are each fine but together too big.
    chunk = "#" * (MAX_SOURCE_BYTES // 4)
    files = [{"path": f"m{i}.py", "content": chunk} for i in range(5)]
    with pytest.raises(InvalidRequest, match="at most"):
        runner.planner.plan(ExecutionRequest(language="python", files=files))


async def test_non_utf8_sources(runner: Runner) -> None:
    latin1 = "# -*- coding: latin-1 -*-\nprint('caf\xe9')\n".encode("latin-1")
    undeclared = b"print('\xff\xfe')\n"
    c_bytes = b'#include <stdio.h>\nint main(void) { puts("\xff\xfe raw"); return 0; }\n'
    declared = await runner.execute(
        ExecutionRequest(
            language="python",
            files=[{"path": "main.py", "content": b64(latin1), "encoding": "base64"}],
        )
    )
    assert declared.verdict == Verdict.OK, describe(declared)
    assert run_stage(declared).stdout == "café\n"
    broken = await runner.execute(
        ExecutionRequest(
            language="python",
            files=[{"path": "main.py", "content": b64(undeclared), "encoding": "base64"}],
        )
    )
    assert broken.verdict == Verdict.RUNTIME_ERROR, describe(broken)  # Python's own verdict
    assert "SyntaxError" in run_stage(broken).stderr
    c = await runner.execute(
        ExecutionRequest(
            language="c", files=[{"path": "main.c", "content": b64(c_bytes), "encoding": "base64"}]
        )
    )
    assert c.verdict == Verdict.OK, describe(c)
    out = run_stage(c).stdout_base64
    assert out is not None and base64.b64decode(out) == b"\xff\xfe raw\n"


def test_invalid_base64_is_refused() -> None:
    with pytest.raises(ValidationError, match="base64"):
        ExecutionRequest(
            language="python",
            files=[{"path": "main.py", "content": "!!not base64!!", "encoding": "base64"}],
        )


@pytest.mark.parametrize(
    "limits",
    [
        {"cpu_time_s": 0},
        {"cpu_time_s": -1},
        {"cpu_time_s": float("nan")},
        {"wall_time_s": -0.5},
        {"memory_mb": 0},
        {"memory_mb": -64},
        {"processes": 0},
        {"output_kb": -1},
        {"file_size_kb": 0},
        {"disk_mb": 0},
        {"memory_mb": "lots"},
        {"cpu": 1},  # unknown key
    ],
)
def test_invalid_limits_fail_validation(limits: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ExecutionRequest(language="python", code="print(1)", limits=limits)
    with pytest.raises(ValidationError):
        ExecutionRequest(language="c", code="int main(){}", compile_limits=limits)


@pytest.mark.parametrize(
    "limits",
    [
        {"cpu_time_s": 1e9},
        {"cpu_time_s": float("inf")},
        {"wall_time_s": 1e12},
        {"memory_mb": 10**12},
        {"processes": 10**6},
        {"output_kb": 10**9},
        {"file_size_kb": 10**12},
        {"disk_mb": 10**7},
    ],
)
async def test_absurd_limits_are_refused_with_the_maximum(
    runner: Runner, limits: dict[str, object]
) -> None:
    (key,) = limits
    with pytest.raises(InvalidRequest, match=rf"{key} = .*\(at most "):
        await runner.execute(ExecutionRequest(language="python", code="print(1)", limits=limits))
    with pytest.raises(InvalidRequest, match="at most"):
        runner.planner.plan(
            ExecutionRequest(language="c", code="int main(){}", compile_limits=limits)
        )


async def test_tiny_limits_give_a_clean_verdict(runner: Runner) -> None:
    """Limits that are valid but too small for anything still end in a verdict."""
    for limits in (
        {"cpu_time_s": 1e-9},
        {"wall_time_s": 1e-9},
        {"memory_mb": 1},
        {"output_kb": 1},
        {"file_size_kb": 1},
        {"disk_mb": 1},
    ):
        result = await execute(runner, "python", "print('x' * 10)", limits=limits)
        assert result.verdict in (
            Verdict.OK, Verdict.TIME_LIMIT, Verdict.MEMORY_LIMIT, Verdict.RUNTIME_ERROR,
        ), (limits, describe(result))  # fmt: skip


async def test_processes_limit_of_one_runs_a_single_process_program(runner: Runner) -> None:
    """`processes` counts the program's processes: 1 is enough for a program that does
    not fork (the sandbox's own helpers must not eat the caller's budget)."""
    result = await execute(runner, "bash", "echo one", limits={"processes": 1})
    assert result.verdict == Verdict.OK, describe(result)
    assert run_stage(result).stdout == "one\n"


@pytest.mark.parametrize(
    "path",
    [
        "../x.py",
        "../../etc/passwd",
        "/etc/passwd",
        "/box/../etc/passwd",
        "a/../../x.py",
        "..",
        "pkg/../../x",
        "..\\..\\x.py",
        "x\0.py",
        "/",
        ".",
    ],
)
def test_path_traversal_in_file_names_is_refused(runner: Runner, path: str) -> None:
    request = ExecutionRequest(
        language="python",
        files=[{"path": "main.py", "content": "print(1)"}, {"path": path, "content": "x"}],
    )
    with pytest.raises(InvalidRequest, match="file path"):
        runner.planner.plan(request)


def test_safe_file_names_are_kept(runner: Runner) -> None:
    plan = runner.planner.plan(
        ExecutionRequest(
            language="python",
            files=[
                {"path": "/box/main.py", "content": "print(1)"},
                {"path": "./lib/util.py", "content": "x = 1"},
                {"path": "data/..hidden", "content": "ok"},
            ],
        )
    )
    assert [p for p, _ in plan.files] == ["main.py", "lib/util.py", "data/..hidden"]


def test_duplicate_file_paths_are_refused(runner: Runner) -> None:
    files = [{"path": "main.py", "content": "print(1)"}, {"path": "./main.py", "content": "2"}]
    with pytest.raises(InvalidRequest, match="same path"):
        runner.planner.plan(ExecutionRequest(language="python", files=files))


def test_unavailable_version_is_refused(runner: Runner) -> None:
    with pytest.raises(InvalidRequest, match="not available"):
        runner.planner.plan(ExecutionRequest(language="python", version="2.7", code="print 1"))
    installed = runner.table.versions["python"]
    assert installed is not None
    plan = runner.planner.plan(
        ExecutionRequest(language="python", version=installed[:4], code="print(1)")
    )
    assert plan.language.name == "python"


def test_nul_bytes_in_args_and_env_are_refused() -> None:
    with pytest.raises(ValidationError):
        ExecutionRequest(language="bash", code="echo", args=["a\0b"])
    with pytest.raises(ValidationError):
        ExecutionRequest(language="bash", code="echo", env={"A": "x\0y"})
    with pytest.raises(ValidationError):
        ExecutionRequest(language="bash", code="echo", env={"A=B": "x"})


async def test_env_cannot_override_the_sandbox_view(runner: Runner) -> None:
    """LD_PRELOAD and friends reach only the program itself, which runs as the sandbox
    user anyway; they do not break the run."""
    result = await execute(
        runner, "bash", 'echo "$LD_PRELOAD"; echo ok', env={"LD_PRELOAD": "/box/evil.so"}
    )
    run = run_stage(result)
    assert result.verdict == Verdict.OK, describe(result)
    assert run.stdout.splitlines()[-1] == "ok"


@pytest.mark.parametrize(
    "fields",
    [
        {"args": ["a" * (5 << 20)]},  # one 5 MiB argument
        {"args": ["a" * (100 << 10)] * 60},  # 6 MiB in many
        {"env": {"BIG": "a" * (5 << 20)}},
    ],
)
async def test_huge_args_or_env_are_refused(runner: Runner, fields: dict[str, object]) -> None:
    """Not a SandboxError (our fault) from a sandbox that could not take the command."""
    with pytest.raises(InvalidRequest, match="args and env"):
        await runner.execute(ExecutionRequest(language="bash", code="echo $#", **fields))


async def test_large_but_allowed_args_give_a_clean_verdict(runner: Runner) -> None:
    # Within the request limit, but beyond what execve takes in one string (128 KiB).
    result = await execute(runner, "bash", "echo ${#1}", args=["a" * (200 << 10)])
    assert result.verdict == Verdict.RUNTIME_ERROR, describe(result)
    assert "Argument list too long" in run_stage(result).stderr
    ok = await execute(runner, "bash", "echo ${#1}", args=["a" * (100 << 10)])
    assert run_stage(ok).stdout == f"{100 << 10}\n", describe(ok)
