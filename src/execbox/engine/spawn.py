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
import typing
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
    """A child whose own stdio is /dev/null plus an error pipe, with more fds of ours
    at chosen numbers.

    The error pipe's end of ours is owned by an asyncio transport from the moment the
    child exists, and ``close()`` closes it: an fd number is never closed twice, which
    in a server would close whatever socket reused it.
    """

    def __init__(
        self,
        pid: int,
        exited: asyncio.Future[int],
        errors: asyncio.StreamReader,
        transport: asyncio.BaseTransport,
    ) -> None:
        self.pid = pid
        self.exited = exited
        self.errors = errors  # the child's own stderr (bwrap's complaints)
        self._transport = transport

    @classmethod
    async def start(cls, argv: Sequence[str], child_fds: dict[int, int]) -> Spawned:
        """Starts argv with an empty environment in a new session; child_fds maps
        numbers (> 2) to fds of ours, which are closed here once the child has them."""
        loop = asyncio.get_running_loop()
        errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
        give = {target: _above_targets(fd) for target, fd in {2: errors_w, **child_fds}.items()}
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
            os.close(errors_r)
            raise
        finally:
            for fd in give.values():
                os.close(fd)
        # From here on the number belongs to a file object, never to an int.
        errors_file = os.fdopen(errors_r, "rb", 0)
        exited = _watch_exit(loop, pid)
        try:
            errors, transport = await _reader(loop, errors_file)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            errors_file.close()
            raise
        return cls(pid, exited, errors, transport)

    def kill(self) -> None:
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Closes the error pipe (after the child is gone: its output is drained)."""
        self._transport.close()


def _watch_exit(loop: asyncio.AbstractEventLoop, pid: int) -> asyncio.Future[int]:
    """A future of the child's exit code, from a pidfd in the event loop (no thread)."""
    exited: asyncio.Future[int] = loop.create_future()
    pidfd = os.pidfd_open(pid)

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if not exited.done():
            exited.set_result(os.waitstatus_to_exitcode(status))

    loop.add_reader(pidfd, reap)
    return exited


async def _writer(loop: asyncio.AbstractEventLoop, file: typing.BinaryIO) -> asyncio.StreamWriter:
    """An asyncio writer over a pipe file of ours, safe to cancel.

    CPython 3.11's write-pipe transport registers its reader (to see the peer close)
    with call_soon and no check that it was closed meanwhile: cancelling the connect
    leaves that registration behind on a closed fd number, and when the number is
    reused (say by a client's socket) the stale callback unregisters and closes it.
    So the connect always completes; a cancelled caller's transport is closed after.
    """
    connecting = asyncio.ensure_future(
        loop.connect_write_pipe(lambda: asyncio.streams.FlowControlMixin(loop=loop), file)
    )
    try:
        transport, protocol = await asyncio.shield(connecting)
    except asyncio.CancelledError:
        connecting.add_done_callback(_close_connected)
        raise
    return asyncio.StreamWriter(transport, protocol, None, loop)


def _close_connected(done: asyncio.Future[tuple[asyncio.BaseTransport, object]]) -> None:
    if not done.cancelled() and done.exception() is None:
        done.result()[0].close()


async def _reader(
    loop: asyncio.AbstractEventLoop, file: typing.BinaryIO
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), file)
    return reader, transport


async def read_pipe(fd: int) -> asyncio.StreamReader:
    """An asyncio reader over a pipe fd of ours (taken over: closed with the reader)."""
    reader, _ = await _reader(asyncio.get_running_loop(), os.fdopen(fd, "rb", 0))
    return reader


async def write_pipe(fd: int) -> asyncio.StreamWriter:
    """An asyncio writer over a pipe fd of ours (taken over: closed with the writer)."""
    return await _writer(asyncio.get_running_loop(), os.fdopen(fd, "wb", 0))
