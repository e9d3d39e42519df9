"""Verdicts: test cases and expected output, and each limit enforced for real."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

from execbox.models import ExecutionRequest, ExecutionResult, Verdict
from execbox.runner import Runner, RunnerEvent
from execbox.runner.results import outputs_match
from kit.results import describe, execute, run_stage, stdout

DOUBLE = "n = int(input())\nprint(n * 2)\n"


async def test_tests_pass_wrong_answer_and_trailing_whitespace(runner: Runner) -> None:
    result = await execute(
        runner,
        "python",
        DOUBLE,
        tests=[
            {"stdin": "2\n", "expected_output": "4\n"},
            {"stdin": "3\n", "expected_output": "7\n"},
            {"stdin": "5\n", "expected_output": "10   \n\n\n"},  # trailing whitespace: fine
            {"stdin": "6\n", "expected_output": "12"},  # no final newline: fine
            {"stdin": "1\n"},  # no expected output: passes when it runs
            {"stdin": "4\n", "expected_output": " 8\n"},  # leading space matters
        ],
    )
    assert result.tests is not None and result.run is None
    verdicts = [t.verdict for t in result.tests]
    assert verdicts == [
        Verdict.OK, Verdict.WRONG_ANSWER, Verdict.OK, Verdict.OK, Verdict.OK, Verdict.WRONG_ANSWER,
    ], describe(result)  # fmt: skip
    assert [t.passed for t in result.tests] == [True, False, True, True, True, False]
    assert [t.stdout for t in result.tests] == ["4\n", "6\n", "10\n", "12\n", "2\n", "8\n"]
    assert result.verdict == Verdict.WRONG_ANSWER


async def test_all_tests_pass_is_ok_and_a_crash_is_runtime_error(runner: Runner) -> None:
    ok, crash = await asyncio.gather(
        execute(
            runner,
            "python",
            DOUBLE,
            tests=[
                {"stdin": "1\n", "expected_output": "2"},
                {"stdin": "9", "expected_output": "18"},
            ],
        ),
        execute(
            runner,
            "python",
            DOUBLE,
            tests=[
                {"stdin": "1\n", "expected_output": "2"},
                {"stdin": "x\n", "expected_output": "?"},
            ],
        ),
    )
    assert ok.verdict == Verdict.OK, describe(ok)
    assert ok.tests is not None and all(t.passed for t in ok.tests)
    assert crash.verdict == Verdict.RUNTIME_ERROR, describe(crash)
    assert crash.tests is not None
    assert crash.tests[0].passed and not crash.tests[1].passed
    assert "ValueError" in crash.tests[1].stderr


def test_outputs_match_rules() -> None:
    assert outputs_match("a \nb\t\n\n", "a\nb")
    assert outputs_match("a\r\nb\r\n", "a\nb\n")
    assert not outputs_match("a\nb", "a\n\nb")
    assert not outputs_match(" a", "a")
    assert not outputs_match("", "0")


async def test_time_limits_cpu_and_wall(runner: Runner) -> None:
    cpu, wall = await asyncio.gather(
        execute(runner, "python", "while True:\n    pass\n", limits={"cpu_time_s": 1}),
        execute(
            runner,
            "python",
            "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n",
            limits={"wall_time_s": 1, "cpu_time_s": 5},
        ),
    )
    c = run_stage(cpu)
    assert cpu.verdict == Verdict.TIME_LIMIT, describe(cpu)
    assert 1000 <= c.cpu_time_ms <= 2000, describe(cpu)
    assert c.signal == 9 and "CPU" in (c.message or ""), describe(cpu)
    w = run_stage(wall)
    assert wall.verdict == Verdict.TIME_LIMIT, describe(wall)
    assert w.cpu_time_ms < 900 and "wall" in (w.message or ""), describe(wall)
    assert w.stdout == "sleeping\n"  # output before the kill is kept


async def test_memory_limit(runner: Runner) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))\n"
    result = await execute(runner, "python", code, limits={"memory_mb": 64})
    run = run_stage(result)
    assert result.verdict == Verdict.MEMORY_LIMIT, describe(result)
    assert run.memory_kb <= 64 * 1024 + 1024, describe(result)


async def test_output_limit_stdout_and_stderr(runner: Runner) -> None:
    flood_out = "import sys\nwhile True:\n    sys.stdout.write('y' * 4096)\n"
    flood_err = "import sys\nwhile True:\n    sys.stderr.write('n' * 4096)\n"
    out, err = await asyncio.gather(
        execute(runner, "python", flood_out, limits={"output_kb": 16}),
        execute(runner, "python", flood_err, limits={"output_kb": 16}),
    )
    o = run_stage(out)
    assert out.verdict == Verdict.OUTPUT_LIMIT, describe(out)
    assert o.stdout_truncated and o.stdout == "y" * 16384
    e = run_stage(err)
    assert err.verdict == Verdict.OUTPUT_LIMIT, describe(err)
    assert e.stderr_truncated and e.stderr == "n" * 16384 and not e.stdout_truncated


async def test_non_utf8_output_comes_back_intact(runner: Runner) -> None:
    raw = bytes(range(256)) + b"\xff\xfe\xc3\x28 end"
    code = (
        f"import sys\nsys.stdout.buffer.write({raw!r})\nsys.stderr.buffer.write(b'err \\xe9\\n')\n"
    )
    result = await execute(runner, "python", code)
    run = run_stage(result)
    assert result.verdict == Verdict.OK, describe(result)
    assert run.stdout_base64 is not None and base64.b64decode(run.stdout_base64) == raw
    assert run.stderr_base64 is not None and base64.b64decode(run.stderr_base64) == b"err \xe9\n"
    # The text form stays valid JSON text, and the whole result serializes.
    again = ExecutionResult.model_validate_json(result.model_dump_json())
    assert again.run is not None and again.run.stdout_base64 == run.stdout_base64


async def test_utf8_output_has_no_base64(runner: Runner) -> None:
    result = await execute(runner, "python", "print('héllo ✓')")
    assert stdout(result) == "héllo ✓\n"
    assert run_stage(result).stdout_base64 is None


async def test_output_streams_as_produced_and_stdin_streams_in(runner: Runner) -> None:
    """Events carry the output chunks; stdin may be an open stream fed while it runs."""
    events: list[RunnerEvent] = []
    got_prompt = asyncio.Event()

    def on_event(event: RunnerEvent) -> None:
        events.append(event)
        if event.kind == "stdout" and b"ready" in event.data:
            got_prompt.set()

    async def feed() -> AsyncIterator[bytes]:
        await got_prompt.wait()  # answers only after the program's prompt came out
        yield b"first\n"
        yield b"second\n"

    code = (
        "import sys\nprint('ready', flush=True)\n"
        "for line in sys.stdin:\n    print('got', line.strip(), flush=True)\n"
    )
    result = await asyncio.wait_for(
        runner.execute(
            ExecutionRequest(language="python", code=code), on_event=on_event, stdin=feed()
        ),
        timeout=30,
    )
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result) == "ready\ngot first\ngot second\n"
    streamed = b"".join(e.data for e in events if e.kind == "stdout" and e.stage == "run")
    assert streamed.decode() == stdout(result)
    assert [e.stage for e in events if e.kind == "stage"] == ["running"]


async def test_stdin_stream_that_never_closes_ends_at_the_wall_limit(runner: Runner) -> None:
    forever = asyncio.Event()

    async def open_stdin() -> AsyncIterator[bytes]:
        yield b"one line\n"
        await forever.wait()  # an interactive client that never closes stdin
        yield b""

    code = "import sys\nfor line in sys.stdin:\n    print('got', line.strip(), flush=True)\n"
    result = await asyncio.wait_for(
        runner.execute(
            ExecutionRequest(language="python", code=code, limits={"wall_time_s": 1}),
            stdin=open_stdin(),
        ),
        timeout=30,
    )
    assert result.verdict == Verdict.TIME_LIMIT, describe(result)
    assert stdout(result) == "got one line\n"
