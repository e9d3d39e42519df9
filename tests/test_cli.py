"""`execbox run` and `execbox languages` as a user calls them: subprocess, real sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.host import claim_uids

EXECBOX = str(Path(sys.executable).parent / "execbox")


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The CLI's environment: a data dir and sandbox uids of its own."""
    uids = claim_uids()
    yield {**os.environ, "EXECBOX_DATA_DIR": str(tmp_path / "data"), **uids.env}
    uids.release()


def execbox(
    env: dict[str, str], *args: str, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [EXECBOX, *args], input=stdin, capture_output=True, env=env, cwd=cwd, timeout=120
    )


def test_run_json_result_follows_the_contract(tmp_path: Path, cli_env: dict[str, str]) -> None:
    prog = tmp_path / "hello.py"
    prog.write_text("import sys\nprint('hi', sys.argv[1:], input())\n")
    done = execbox(cli_env, "run", str(prog), "--stdin", "there", "--arg", "a", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert result["verdict"] == "ok"
    assert result["language"]["name"] == "python"
    assert result["run"]["stdout"] == "hi ['a'] there\n"
    for key in ("stdout", "stderr", "exit_code", "signal", "verdict", "wall_time_ms",
                "cpu_time_ms", "memory_kb", "stdout_truncated", "stderr_truncated"):  # fmt: skip
        assert key in result["run"]


def test_run_streams_output_and_exit_status_follows_program(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    prog = tmp_path / "fail.sh"
    prog.write_text("echo out; echo err >&2; exit 7\n")
    done = execbox(cli_env, "run", str(prog))
    assert done.returncode == 7
    assert done.stdout == b"out\n"
    assert b"err\n" in done.stderr


def test_run_piped_stdin_and_limits(tmp_path: Path, cli_env: dict[str, str]) -> None:
    prog = tmp_path / "spin.c"
    prog.write_text(
        "#include <stdio.h>\nint main(void){char b[64];fgets(b,64,stdin);"
        'printf("%s",b);fflush(stdout);for(;;);}\n'
    )
    done = execbox(cli_env, "run", str(prog), "--cpu-time", "0.5", "--json", stdin=b"piped\n")
    result = json.loads(done.stdout)
    assert result["verdict"] == "time_limit"
    assert result["run"]["stdout"] == "piped\n"
    assert result["run"]["cpu_time_ms"] >= 500
    assert done.returncode == 128 + 9


def test_compile_error_exits_1_with_the_compiler_message(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    prog = tmp_path / "broken.c"
    prog.write_text("int main(void) { return nope; }\n")
    done = execbox(cli_env, "run", str(prog))
    assert done.returncode == 1
    assert b"nope" in done.stderr
    assert b"compile_error" in done.stderr


def test_unknown_extension_says_what_to_do(tmp_path: Path, cli_env: dict[str, str]) -> None:
    prog = tmp_path / "x.unknown"
    prog.write_text("print(1)")
    done = execbox(cli_env, "run", str(prog))
    assert done.returncode == 2
    assert b"-l LANG" in done.stderr
    done = execbox(cli_env, "run", str(prog), "-l", "cobol")
    assert done.returncode == 2
    assert b"supported: python" in done.stderr


def test_languages_lists_all_with_versions(cli_env: dict[str, str]) -> None:
    done = execbox(cli_env, "languages", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"python", "javascript", "typescript", "java", "go", "c", "cpp", "rust",
                         "ruby", "php", "bash"}  # fmt: skip
    assert all(row["available"] and row["version"] for row in rows.values())
    assert rows["cpp"]["compiled"] and not rows["python"]["compiled"]
