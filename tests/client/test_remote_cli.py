"""`execbox run --server URL`: live output, stdin forwarded, the program's exit status."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from kit.servers import API_KEY, Server

EXECBOX = str(Path(sys.executable).parent / "execbox")
LIMIT_S = 60  # a guard against a hang, not a measurement

GREET = """
import sys
name = input("name? ")
print(f"hello, {name}")
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "greet.py"
    path.write_text(GREET)
    return path


@pytest.fixture
def env(server: Server) -> dict[str, str]:
    return {**os.environ, "EXECBOX_API_KEY": API_KEY}


def test_piped_stdin_output_and_exit_status(
    server: Server, program: Path, env: dict[str, str]
) -> None:
    done = subprocess.run(
        [EXECBOX, "run", "--server", server.url, str(program)],
        input=b"Ada\n",
        capture_output=True,
        env=env,
        timeout=LIMIT_S,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"name? hello, Ada\n"
    assert b"to stderr" in done.stderr


def test_server_from_the_environment_and_json(
    server: Server, program: Path, env: dict[str, str]
) -> None:
    done = subprocess.run(
        [EXECBOX, "run", str(program), "--stdin", "Bob", "--json"],
        capture_output=True,
        env={**env, "EXECBOX_SERVER": server.url},
        timeout=LIMIT_S,
    )
    result = json.loads(done.stdout)
    assert done.returncode == 3
    assert result["id"] and result["verdict"] == "runtime_error"
    assert result["run"]["stdout"] == "name? hello, Bob\n"


def test_a_terminal_is_forwarded_as_typed(
    server: Server, program: Path, env: dict[str, str]
) -> None:
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [EXECBOX, "run", "--server", server.url, str(program)],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(terminal)
    try:
        assert proc.stdout is not None
        # The prompt arrives while the program waits: the output is live.
        assert proc.stdout.read(len(b"name? ")) == b"name? "
        os.write(controller, b"Eve\n")
        assert proc.wait(timeout=LIMIT_S) == 3
        assert proc.stdout.read() == b"hello, Eve\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)


def test_an_unreachable_server_is_a_clear_error(program: Path) -> None:
    done = subprocess.run(
        [EXECBOX, "run", "--server", "http://127.0.0.1:1", str(program)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=LIMIT_S,
    )
    assert done.returncode == 2
    assert b"cannot reach the execbox server" in done.stderr
