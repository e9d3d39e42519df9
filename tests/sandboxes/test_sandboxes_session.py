"""The long-lived sandbox engine: many commands in one set of namespaces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from execbox.engine import Command, Outcome, Sandbox
from execbox.engine.netns import NamespaceDialer
from execbox.engine.session import Session, SessionLimits, command_limits, open_session

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIMITS = SessionLimits(memory_bytes=256 << 20, processes=64, disk_mb=16)
SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "        self.wfile.write(b'hello ' + self.path.encode())\n"
    "print('listening', flush=True)\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def running(pid: int) -> bool:
    """Alive and not a zombie (this host's PID 1 reaps orphans only now and then)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def sh(script: str) -> Command:
    return Command(["/bin/sh", "-c", script])


@pytest_asyncio.fixture(loop_scope="session")
async def session(engine: Sandbox) -> AsyncIterator[Session]:
    session = await open_session(engine, LIMITS)
    yield session
    await session.close()


async def until_answers(dialer: NamespaceDialer, session: Session, port: int) -> None:
    while True:
        try:
            (await dialer.connect(session.netns_fd, port)).close()
            return
        except OSError:
            await asyncio.sleep(0.05)


async def test_commands_share_one_sandbox(session: Session, dialer: NamespaceDialer) -> None:
    limits = command_limits(LIMITS, 30, 1 << 20)
    session.workspace.write_file("server.py", SERVER.encode())
    lines: list[bytes] = []
    server = await session.exec(
        Command(["/usr/bin/python3", "server.py", "8080"]),
        command_limits(LIMITS, None, 1 << 20),
        capture=False,
        on_output=lambda _, data: lines.append(data),
    )
    await until_answers(dialer, session, 8080)
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/x').read())"
    result = await session.run(Command(["/usr/bin/python3", "-c", fetch]), limits)
    assert (result.outcome, result.exit_code) == (Outcome.EXITED, 0), result
    assert result.stdout == b"b'hello /x'\n"
    assert b"listening\n" in b"".join(lines)
    # The preview path: a socket made in the sandbox's namespace by the host.
    sock = await dialer.connect(session.netns_fd, 8080)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /p HTTP/1.0\r\n\r\n")
    assert (await reader.read()).endswith(b"hello /p")
    writer.close()
    server.kill()
    assert (await server.wait()).signal == 9


async def test_stdin_exit_code_and_output(session: Session) -> None:
    limits = command_limits(LIMITS, 30, 1 << 20)
    result = await session.run(sh("cat; echo err >&2; exit 3"), limits, stdin=b"\xff\x00abc")
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"\xff\x00abc", b"err\n")
    assert result.outcome == Outcome.EXITED


async def test_timeout_kills_the_whole_command(session: Session) -> None:
    # E2B #500: a timed-out command must not keep running.
    result = await session.run(sh("sleep 60 & sleep 60; wait"), command_limits(LIMITS, 0.3, 1024))
    assert result.outcome == Outcome.KILLED_FOR_TIME, result
    left = await session.run(
        sh("ps -e -o comm= | grep -c sleep || true"), command_limits(LIMITS, 30, 1024)
    )
    assert left.stdout == b"0\n"


async def test_output_cap_kills(session: Session) -> None:
    result = await session.run(sh("yes"), command_limits(LIMITS, 30, 4096))
    assert result.outcome == Outcome.KILLED_FOR_OUTPUT
    assert result.stdout_truncated and len(result.stdout) == 4096


async def test_close_kills_everything_and_frees_the_workspace(engine: Sandbox) -> None:
    session = await open_session(engine, LIMITS)
    await session.exec(sh("setsid sleep 600"), command_limits(LIMITS, None, 1024), capture=False)
    await session.exec(sh("sleep 600"), command_limits(LIMITS, None, 1024), capture=False)
    await session.run(sh("true"), command_limits(LIMITS, 30, 1024))  # init took the others
    pids = session.cgroup.pids()
    assert len(pids) >= 3
    path = session.workspace.path
    await session.close()
    assert not path.exists()
    assert [pid for pid in pids if running(pid)] == []


async def test_quick_commands_never_lose_their_exit(session: Session) -> None:
    # A command may end before exec() returns: its exit must still be matched.
    for _ in range(20):
        result = await session.run(Command(["/bin/true"]), command_limits(LIMITS, 30, 1024))
        assert (result.outcome, result.exit_code) == (Outcome.EXITED, 0)


async def test_memory_and_pids_limits_hold_over_all_processes(engine: Sandbox) -> None:
    small = SessionLimits(memory_bytes=96 << 20, processes=32, disk_mb=8)
    session = await open_session(engine, small)
    try:
        hog = "x = bytearray(60 << 20); import time; time.sleep(30)"
        first = await session.exec(
            Command(["/usr/bin/python3", "-c", hog]), command_limits(small, 30, 1024)
        )
        # Together the two pass the sandbox's memory: the second one is killed.
        second = await session.run(
            Command(["/usr/bin/python3", "-c", hog]), command_limits(small, 30, 1024)
        )
        first.kill()
        outcomes = {(await first.wait()).outcome, second.outcome}
        assert Outcome.KILLED_FOR_MEMORY in outcomes, outcomes
        # A fork bomb meets the pids limit and ends with its process group.
        await session.run(
            sh("b() { b | b & }; b 2>/dev/null; sleep 1"), command_limits(small, 1, 1024)
        )
        after = await session.run(
            Command(["/bin/ps", "-e", "-o", "comm="]), command_limits(small, 30, 4096)
        )
        assert (
            after.outcome == Outcome.EXITED
            and after.exit_code == 0
            and "sh" not in after.stdout.decode().split()
        ), after
    finally:
        await session.close()
