"""Spawning the sandbox process: posix_spawn, a pidfd for its exit, asyncio pipes.

asyncio's own subprocess support watches each child with a thread (Python 3.11)
and reaps through Popen, which races with other waiters; a sandbox start is on
every request's path, so it is done here with one posix_spawn (vfork speed) and
a pidfd in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Sequence

LOWEST_SOURCE_FD = 16  # sources of the dup2s sit above every target fd


def _above_targets(fd: int) -> int:
    """Moves fd above the target numbers, so no dup2 of the file actions is a no-op."""
    if fd >= LOWEST_SOURCE_FD:
        return fd
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, LOWEST_SOURCE_FD)
    os.close(fd)
    return high


class Spawned:
    """A child whose own stdio is /dev/null plus an error pipe, carrying a program's
    stdin/stdout/stderr pipes (and other fds) at chosen numbers."""

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        errors: asyncio.StreamReader,
        exited: asyncio.Future[int],
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.errors = errors  # the child's own stderr (bwrap's complaints)
        self.exited = exited

    @classmethod
    async def start(
        cls, argv: Sequence[str], stdio_fds: tuple[int, int, int], child_fds: dict[int, int]
    ) -> Spawned:
        """Starts argv with an empty environment in a new session.

        The program's stdin, stdout and stderr pipes are given at the numbers of
        stdio_fds; child_fds maps more numbers (> 2) to fds of ours, which are
        closed here once the child has them.
        """
        loop = asyncio.get_running_loop()
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
        give = {
            2: errors_w,
            **dict(zip(stdio_fds, (stdin_r, stdout_w, stderr_w), strict=True)),
            **child_fds,
        }
        give = {target: _above_targets(fd) for target, fd in give.items()}
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1)]
        try:
            pid = os.posix_spawn(  # noqa: ASYNC221 - vfork: returns once the child has exec'd
                argv[0],
                list(argv),
                {},
                file_actions=[
                    *devnull,
                    *((os.POSIX_SPAWN_DUP2, fd, target) for target, fd in give.items()),
                ],
                setsid=True,
            )
        except BaseException:
            for fd in (stdin_w, stdout_r, stderr_r, errors_r):
                os.close(fd)
            raise
        finally:
            for fd in give.values():
                os.close(fd)

        exited: asyncio.Future[int] = loop.create_future()
        pidfd = os.pidfd_open(pid)

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            if not exited.done():
                exited.set_result(os.waitstatus_to_exitcode(status))

        loop.add_reader(pidfd, reap)
        stdout = await _reader(loop, stdout_r)
        stderr = await _reader(loop, stderr_r)
        errors = await _reader(loop, errors_r)
        stdin = await write_pipe(stdin_w)
        return cls(pid, stdin, stdout, stderr, errors, exited)

    def kill(self) -> None:
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    return reader


async def read_pipe(fd: int) -> asyncio.StreamReader:
    """An asyncio reader over a pipe fd of ours (taken over: closed with the reader)."""
    return await _reader(asyncio.get_running_loop(), fd)


async def write_pipe(fd: int) -> asyncio.StreamWriter:
    """An asyncio writer over a pipe fd of ours (taken over: closed with the writer)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(fd, "wb", 0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)
