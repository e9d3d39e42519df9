"""One started sandbox: bwrap with execbox-init as PID 1, waiting for one command.

Starting (bwrap, namespaces, mounts: the slow part) and running are separate
steps, so a warm pool can start boxes ahead of time and a request only pays for
the run. A box is used once: a new command gets a new box and a new cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from execbox.models import Verdict
from execbox.sandbox.bwrap import WORKDIR, FsView, bwrap_argv
from execbox.sandbox.cgroups import CgroupStats, RunCgroup
from execbox.sandbox.errors import SandboxError
from execbox.sandbox.spawn import Spawned, read_pipe
from execbox.sandbox.workspace import Workspace

READ_CHUNK = 65536
KILL_GRACE_S = 2.0
START_TIMEOUT_S = 10
# Where the sandbox process finds its pipes (see init.c and bwrap.py).
CMD_FD, STATUS_FD, SECCOMP_FD = 3, 4, 5
PROGRAM_STDIO_FDS = (6, 7, 8)
PIPE_BUFFER_BYTES = 65536  # a command this small is written at once, without a thread
# bwrap (outside) and execbox-init (PID 1) live in the run's cgroup too: pids.max is the
# caller's `processes` plus these, so that `processes` counts the program's own.
SANDBOX_OWN_PROCESSES = 2

OutputCallback = Callable[[str, bytes], None]
StdinSource = bytes | AsyncIterator[bytes] | None


@dataclass(frozen=True)
class Command:
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = WORKDIR


@dataclass(frozen=True)
class SandboxLimits:
    cpu_time_s: float
    wall_time_s: float
    memory_bytes: int
    processes: int
    output_bytes: int
    file_size_bytes: int
    stack_bytes: int = 0  # 0: the memory limit (recursion-heavy programs need deep stacks)
    open_files: int = 1024
    cpus: float | None = None


@dataclass
class SandboxResult:
    verdict: Verdict
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    wall_time_s: float
    cpu_time_s: float
    memory_bytes: int
    message: str | None = None


def encode_command(cmd: Command, limits: SandboxLimits) -> bytes:
    """The request execbox-init reads (see init.c)."""
    for part in (*cmd.argv, cmd.cwd, *cmd.env, *cmd.env.values()):
        if "\0" in part:
            raise SandboxError("argv, env and cwd may not contain NUL bytes")
    stack = limits.stack_bytes or min(limits.memory_bytes, 1 << 30)
    # Backstop only: the cgroup watchdog is exact. 0 (no limit) for commands without one.
    cpu_rlimit = int(limits.cpu_time_s) + 2 if math.isfinite(limits.cpu_time_s) else 0
    header = (
        f"execbox1 {len(cmd.argv)} {len(cmd.env)} {cpu_rlimit} "
        f"{limits.file_size_bytes} {limits.open_files} {stack}\n"
    )
    strings = [cmd.cwd, *cmd.argv, *(f"{k}={v}" for k, v in cmd.env.items())]
    return header.encode() + b"".join(s.encode() + b"\0" for s in strings)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Capped:
    """Collects one output stream up to its cap."""

    def __init__(self, name: str, cap: int, on_output: OutputCallback | None) -> None:
        self.name, self.cap, self.on_output = name, cap, on_output
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> bool:
        """Keeps what fits; returns False once the cap is passed."""
        room = self.cap - self.size
        if len(data) > room:
            data, self.truncated = data[:room], True
        if data:
            self.chunks.append(data)
            self.size += len(data)
            if self.on_output is not None:
                self.on_output(self.name, data)
        return not self.truncated

    def value(self) -> bytes:
        return b"".join(self.chunks)


class Box:
    """A started sandbox bound to a workspace and a cgroup."""

    def __init__(
        self,
        proc: Spawned,
        cgroup: RunCgroup,
        workspace: Workspace,
        cmd_fd: int,
        status: asyncio.StreamReader,
        network: bool,
    ) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.workspace = workspace
        self._cmd_fd = cmd_fd
        self._sending: asyncio.Future[None] | None = None
        self._status = status
        self.network = network
        self.used = False

    @classmethod
    async def start(
        cls,
        *,
        init_binary: Path,
        bwrap: str,
        uid: int,
        gid: int,
        view: FsView,
        seccomp_file: Path,
        cgroup: RunCgroup,
        workspace: Workspace,
        network: bool = False,
    ) -> Box:
        cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        seccomp_fd = os.open(seccomp_file, os.O_RDONLY | os.O_CLOEXEC)
        argv = [
            str(init_binary), "enter", str(uid), str(gid), *cgroup.procs_files, "--",
            *bwrap_argv(bwrap, view, workspace.path, network=network, seccomp_fd=SECCOMP_FD,
                        cmd_fd=CMD_FD, status_fd=STATUS_FD, stdio_fds=PROGRAM_STDIO_FDS),
        ]  # fmt: skip
        try:
            proc = await Spawned.start(
                argv,
                PROGRAM_STDIO_FDS,
                {CMD_FD: cmd_r, STATUS_FD: status_w, SECCOMP_FD: seccomp_fd},
            )
        except BaseException:
            for fd in (cmd_w, status_r):
                os.close(fd)
            raise
        try:
            status = await read_pipe(status_r)
        except BaseException:
            proc.kill()
            proc.close()
            os.close(cmd_w)
            raise
        box = cls(proc, cgroup, workspace, cmd_w, status, network)
        try:
            line = await asyncio.wait_for(status.readline(), timeout=START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        except BaseException:
            box.kill()
            proc.close()
            raise
        if line != b"ready\n":
            box.kill()
            stderr = b""
            with contextlib.suppress(TimeoutError):
                stderr = await asyncio.wait_for(proc.errors.read(), timeout=START_TIMEOUT_S)
            await box.release()
            raise SandboxError(
                "the sandbox did not start: "
                + (stderr.decode(errors="replace").strip() or f"bwrap exited with {proc.exited}")
            )
        return box

    async def run(
        self,
        cmd: Command,
        limits: SandboxLimits,
        *,
        stdin: StdinSource = None,
        on_output: OutputCallback | None = None,
    ) -> SandboxResult:
        if self.used:
            raise SandboxError("a box runs one command; start a new one")
        self.used = True
        try:
            return await self._execute(cmd, limits, stdin, on_output)
        finally:
            self.kill()

    async def _execute(
        self,
        cmd: Command,
        limits: SandboxLimits,
        stdin: StdinSource,
        on_output: OutputCallback | None,
    ) -> SandboxResult:
        self.cgroup.set_limits(
            limits.memory_bytes, limits.processes + SANDBOX_OWN_PROCESSES, limits.cpus
        )
        self.cgroup.start_accounting()
        payload = encode_command(cmd, limits)
        out = _Capped("stdout", limits.output_bytes, on_output)
        err = _Capped("stderr", limits.output_bytes, on_output)
        killed_for: list[Verdict] = []

        def kill(reason: Verdict) -> None:
            if not killed_for:
                killed_for.append(reason)
            self.cgroup.kill()

        async def pump(reader: asyncio.StreamReader, sink: _Capped) -> None:
            while chunk := await reader.read(READ_CHUNK):
                if not sink.add(chunk):
                    kill(Verdict.OUTPUT_LIMIT)

        async def feed() -> None:
            writer = self.proc.stdin
            assert writer is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if isinstance(stdin, bytes):
                    writer.write(stdin)
                    await writer.drain()
                elif stdin is not None:
                    async for chunk in stdin:
                        writer.write(chunk)
                        await writer.drain()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                writer.close()

        async def watch_cpu() -> None:
            limit_ns = int(limits.cpu_time_s * 1e9)
            cores = len(os.sched_getaffinity(0)) or 1
            while True:
                left = limit_ns - self.cgroup.cpu_ns()
                if left <= 0:
                    kill(Verdict.TIME_LIMIT)
                    return
                # CPU time accrues at most `cores` seconds per second: sleep until it could end.
                await asyncio.sleep(max(0.005, left / 1e9 / cores))

        await self._send(payload)
        started = time.monotonic()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        pumps = [
            asyncio.create_task(pump(self.proc.stdout, out)),
            asyncio.create_task(pump(self.proc.stderr, err)),
        ]
        helpers = [asyncio.create_task(feed()), asyncio.create_task(watch_cpu())]
        status_line = b""
        try:
            try:
                status_line = await asyncio.wait_for(
                    self._status.readline(), timeout=limits.wall_time_s
                )
            except TimeoutError:
                kill(Verdict.TIME_LIMIT)
            # The command ended or was killed; init killed the rest. Drain the pipes.
            try:
                await asyncio.wait_for(asyncio.gather(*pumps), timeout=KILL_GRACE_S)
            except TimeoutError:
                self.cgroup.kill()
                await asyncio.gather(*pumps, return_exceptions=True)
            stats = self.cgroup.stats()
        finally:
            for task in (*helpers, *pumps):
                task.cancel()
        host_wall = time.monotonic() - started
        return make_result(status_line, stats, limits, out, err, killed_for, host_wall)

    async def _send(self, payload: bytes) -> None:
        try:
            if len(payload) <= PIPE_BUFFER_BYTES:
                _write_all(self._cmd_fd, payload)
            else:
                # A blocking write in a thread; its fd stays open until it returns.
                self._sending = asyncio.get_running_loop().run_in_executor(
                    None, _write_all, self._cmd_fd, payload
                )
                await asyncio.shield(self._sending)  # a cancel must not mark it done
        except BrokenPipeError as exc:
            raise SandboxError("the sandbox died before its command was sent") from exc
        finally:
            self._close_command()

    def _close_command(self) -> None:
        """Closes the command pipe (EOF for init), but never under a write in flight:
        closing it there would let the thread write into whatever reuses the number."""
        if self._sending is not None and not self._sending.done():
            self._sending.add_done_callback(lambda _: self._close_command())
        elif self._cmd_fd >= 0:
            os.close(self._cmd_fd)
            self._cmd_fd = -1

    def kill(self) -> None:
        """Kills every process of this box at once (the cgroup and bwrap)."""
        self._close_command()
        self.cgroup.kill()
        self.proc.kill()

    async def release(self) -> None:
        """Reaps bwrap and removes the cgroup, after kill(); off the request's path."""
        self.kill()
        await self.proc.exited
        self.proc.close()
        await self.cgroup.remove_async()


def make_result(
    status_line: bytes,
    stats: CgroupStats,
    limits: SandboxLimits,
    out: _Capped,
    err: _Capped,
    killed_for: list[Verdict],
    host_wall: float,
) -> SandboxResult:
    """The result of a command from init's status line ("exit STATUS WALL_US ...") and
    the host's own observations (cgroup stats, why the host killed it)."""
    fields = status_line.split()
    exit_code: int | None = None
    sig: int | None = None
    wall = host_wall
    message = None
    if len(fields) == 6 and fields[0] == b"exit":
        code = os.waitstatus_to_exitcode(int(fields[1]))
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
        wall = int(fields[2]) / 1e6
    elif killed_for:
        sig = signal.SIGKILL
    elif status_line.startswith(b"error"):
        message = status_line.decode(errors="replace").strip()
    cpu = stats.cpu_ns / 1e9
    if stats.oom_kills:
        verdict, message = Verdict.MEMORY_LIMIT, "killed: out of memory"
    elif killed_for:
        verdict = killed_for[0]
        message = {
            Verdict.TIME_LIMIT: (
                f"killed: CPU time limit of {limits.cpu_time_s:g}s"
                if cpu >= limits.cpu_time_s
                else f"killed: wall time limit of {limits.wall_time_s:g}s"
            ),
            Verdict.OUTPUT_LIMIT: f"killed: output passed {limits.output_bytes} bytes",
        }.get(verdict)
    elif sig == signal.SIGXCPU or cpu > limits.cpu_time_s:
        verdict, message = Verdict.TIME_LIMIT, f"CPU time limit of {limits.cpu_time_s:g}s"
    elif sig == signal.SIGXFSZ:
        verdict = Verdict.OUTPUT_LIMIT
        message = f"file size limit of {limits.file_size_bytes} bytes"
    elif exit_code is None and sig is None:
        verdict = Verdict.INTERNAL_ERROR
        message = message or "the sandbox ended without reporting the program's status"
    elif exit_code == 0:
        verdict = Verdict.OK
    else:
        verdict = Verdict.RUNTIME_ERROR
        if sig is not None:
            message = f"killed by signal {sig} ({signal.Signals(sig).name})"
    return SandboxResult(
        verdict=verdict,
        exit_code=exit_code,
        signal=sig,
        stdout=out.value(),
        stderr=err.value(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        wall_time_s=wall,
        cpu_time_s=cpu,
        memory_bytes=stats.memory_peak_bytes,
        message=message,
    )
