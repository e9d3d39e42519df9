"""A started sandbox: one set of namespaces, one workspace, many commands.

execbox-init's ``serve`` role runs as PID 1 (see init.c) and starts the commands
the host sends. Each command gets its own stdio pipes, passed to init over a
SOCK_SEQPACKET socket, and its own process group. Two kinds use it:

- persistent sandboxes (shared): commands run side by side, so a server started by
  one is reachable by the next and by the preview proxy; the cgroup caps memory,
  pids and CPU of all of them together, and the tmpfs size caps their disk;
- executions (exclusive, box.py): one command at a time, accounted in a cgroup of
  its own, and nothing of it outlives its end, so the sandbox can be reused.

    session = await open_session(sandbox, SessionLimits(...))
    proc = await session.exec(Command(["/bin/sh", "-c", "echo hi"]), command_limits(30))
    result = await proc.wait()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from execbox.engine.bwrap import INIT_PATH, bwrap_options
from execbox.engine.cgroups import CgroupStats, RunCgroup
from execbox.engine.command import (
    KILL_GRACE_S,
    READ_CHUNK,
    SANDBOX_OWN_PROCESSES,
    CappedOutput,
    Command,
    Outcome,
    OutputCallback,
    SandboxLimits,
    SandboxResult,
    StdinSource,
    encode_command,
    make_result,
)
from execbox.engine.errors import SandboxError
from execbox.engine.names import owned_name
from execbox.engine.ptys import mount_ptys, unmount_ptys
from execbox.engine.spawn import Spawned, read_pipe, write_pipe
from execbox.engine.uids import UidLease
from execbox.engine.workspace import Workspace, write_all

if TYPE_CHECKING:
    from execbox.engine.engine import Sandbox

CONTROL_FD = 3
SECCOMP_FD = 4
START_TIMEOUT_S = 10
# A request this small travels in its control message (init reads at most 256 KiB);
# a larger one in a memfd passed with it, up to init's limit.
MAX_INLINE_REQUEST = 128 << 10
MAX_REQUEST = 4 << 20
STACK_CAP = 256 << 20


@dataclass(frozen=True)
class SessionLimits:
    """What all processes of a sandbox share."""

    memory_bytes: int
    processes: int
    disk_mb: int
    cpus: float | None = None


def command_limits(
    session: SessionLimits, timeout_s: float | None, output_bytes: int
) -> SandboxLimits:
    """Per-command limits: a wall timeout (none for servers) and an output cap; memory,
    pids and CPU are the sandbox's, enforced by its cgroup."""
    return SandboxLimits(
        cpu_time_s=math.inf,  # CPU is shared out by the cgroup's CPU share instead
        wall_time_s=math.inf if timeout_s is None else timeout_s,
        memory_bytes=session.memory_bytes,
        processes=session.processes,
        output_bytes=output_bytes,
        file_size_bytes=session.disk_mb << 20,
        stack_bytes=min(session.memory_bytes, STACK_CAP),
    )


class Process:
    """One command running in a session."""

    def __init__(
        self,
        session: Session,
        pid: int,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self.id = pid  # the session's number for it, not a process id
        self.session = session
        self.stdin = stdin
        self._streams = (stdout, stderr)
        self._status: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._killed_for: list[Outcome] = []
        self._task: asyncio.Task[SandboxResult] | None = None

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self) -> SandboxResult:
        assert self._task is not None
        return await asyncio.shield(self._task)

    async def write(self, data: bytes) -> None:
        """Feeds the program's stdin; BrokenPipeError once it stopped reading."""
        self.stdin.write(data)
        await self.stdin.drain()

    def close_stdin(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.stdin.close()

    def kill(self, reason: Outcome = Outcome.KILLED) -> None:
        """Kills the command's process group (what it started with it); in an exclusive
        sandbox, every process but init."""
        if not self._killed_for:
            self._killed_for.append(reason)
        if not self._status.done():
            with contextlib.suppress(SandboxError):  # ended anyway
                self.session._send(f"kill {self.id}\n".encode())

    async def _supervise(
        self,
        limits: SandboxLimits,
        on_output: OutputCallback | None,
        capture: bool,
        stdin: StdinSource,
        accounting: RunCgroup | None,
    ) -> SandboxResult:
        """Runs the command to its end. With ``accounting`` (the command's own cgroup),
        its CPU time is watched and its stats come from there; otherwise from init's
        rusage of the command's process."""
        out = CappedOutput("stdout", limits.output_bytes if capture else 0, None)
        err = CappedOutput("stderr", limits.output_bytes if capture else 0, None)

        async def pump(reader: asyncio.StreamReader, sink: CappedOutput) -> None:
            while chunk := await reader.read(READ_CHUNK):
                if on_output is not None:
                    on_output(sink.name, chunk)
                if capture and not sink.add(chunk):
                    self.kill(Outcome.KILLED_FOR_OUTPUT)

        oom_before = self.session.cgroup.stats().oom_kills if accounting is None else 0
        started = time.monotonic()
        pumps = [
            asyncio.create_task(pump(r, s)) for r, s in zip(self._streams, (out, err), strict=True)
        ]
        helpers = []
        if stdin == b"":
            self.close_stdin()  # nothing to feed: no task for it
        elif stdin is not None:
            helpers.append(asyncio.create_task(self._feed(stdin)))
        if accounting is not None and math.isfinite(limits.cpu_time_s):
            helpers.append(asyncio.create_task(self._watch_cpu(accounting, limits.cpu_time_s)))
        timeout = None if math.isinf(limits.wall_time_s) else limits.wall_time_s
        try:
            try:
                line = await asyncio.wait_for(asyncio.shield(self._status), timeout)
            except TimeoutError:
                self.kill(Outcome.KILLED_FOR_TIME)  # E2B #500: a timeout must end the process
                line = await self._status_after_kill()
            # The group was killed with its leader; what escaped it (setsid) must not
            # hold the result back: its pipes are abandoned after a grace period.
            try:
                await asyncio.wait_for(asyncio.gather(*pumps), KILL_GRACE_S)
            except TimeoutError:
                await asyncio.gather(*(self._cancel(t) for t in pumps))
        finally:
            for task in (*pumps, *helpers):
                task.cancel()
            self.close_stdin()
        if accounting is not None:
            try:
                stats = accounting.stats()
            except OSError:  # the box was killed and freed meanwhile (a cancel)
                stats = CgroupStats(0, 0, 0)
        else:
            fields = line.split()
            usage = [int(f) for f in fields[3:5]] if len(fields) == 6 else [0, 0]
            stats = CgroupStats(
                cpu_ns=sum(usage) * 1000,
                memory_peak_bytes=int(fields[5]) * 1024 if len(fields) == 6 else 0,
                oom_kills=self._oom_since(oom_before),
            )
        host_wall = time.monotonic() - started
        return make_result(line, stats, limits, out, err, self._killed_for, host_wall)

    async def _status_after_kill(self) -> bytes:
        """init reports a killed command at once; an exclusive sandbox whose init does
        not (OOM-killed, say) is killed whole, which ends the command too."""
        if not self.session.exclusive:
            return await self._status
        try:
            return await asyncio.wait_for(asyncio.shield(self._status), KILL_GRACE_S)
        except TimeoutError:
            self.session.kill()
            return await self._status

    async def _feed(self, stdin: bytes | AsyncIterator[bytes]) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if isinstance(stdin, bytes):
                await self.write(stdin)
            else:
                async for chunk in stdin:
                    await self.write(chunk)
        self.close_stdin()

    async def _watch_cpu(self, cgroup: RunCgroup, limit_s: float) -> None:
        limit_ns = int(limit_s * 1e9)
        cores = len(os.sched_getaffinity(0)) or 1
        while True:
            try:
                left = limit_ns - cgroup.cpu_ns()
            except OSError:  # the box was killed and freed meanwhile
                return
            if left <= 0:
                self.kill(Outcome.KILLED_FOR_TIME)
                return
            # CPU time accrues at most `cores` seconds per second: sleep until it could end.
            await asyncio.sleep(max(0.005, left / 1e9 / cores))

    def _oom_since(self, before: int) -> int:
        try:
            return self.session.cgroup.stats().oom_kills - before
        except OSError:  # the sandbox is gone, and its cgroup with it
            return 0

    @staticmethod
    async def _cancel(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _HostHold:
    """What a session holds on the host while anything of it may run: a hold on its
    workspace's uid (uids.py) and its own pty instance (ptys.py); released once."""

    def __init__(self, lease: UidLease | None, ptys: Path) -> None:
        mount_ptys(ptys)
        if lease is not None:
            lease.hold()
        self._lease = lease
        self._ptys: Path | None = ptys

    def release(self) -> None:
        if self._ptys is None:
            return
        unmount_ptys(self._ptys)
        self._ptys = None
        if self._lease is not None:
            self._lease.release()


class Session:
    """A started long-lived sandbox."""

    def __init__(
        self,
        proc: Spawned,
        cgroup: RunCgroup,
        workspace: Workspace,
        control: socket.socket,
        *,
        network: bool,
        exclusive: bool,
    ) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.workspace = workspace
        self.network = network
        self.exclusive = exclusive
        self._limits: SessionLimits | None = None
        self.init_pid = 0  # execbox-init's pid on the host, once started
        self._control = control
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running: dict[int, Process] = {}
        self._ids = itertools.count(1)
        self.ended = asyncio.Event()
        self.netns_fd = -1  # the sandbox's network namespace, for the preview proxy
        self._held: _HostHold | None = None  # its uid and pty instance, until shutdown
        self.ptys: Path | None = None  # its pty instance's mount point on the host
        asyncio.get_running_loop().add_reader(control.fileno(), self._on_control)

    @classmethod
    async def start(
        cls,
        sandbox: Sandbox,
        workspace: Workspace,
        cgroup: RunCgroup,
        *,
        network: bool = False,
        exclusive: bool = False,
    ) -> Session:
        """bwrap with execbox-init serving in it, in ``cgroup`` (whose limits the caller
        sets: a persistent sandbox's for all its commands, a box's per command)."""
        ptys = sandbox.settings.ptys_dir / owned_name()
        # What the session holds on the host until it is shut down: the uid too (its
        # workspace may go first), and a pty instance of its own.
        held = _HostHold(workspace.lease, ptys)
        host, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        host.setblocking(False)
        seccomp_fd = os.open(sandbox.seccomp_file, os.O_RDONLY | os.O_CLOEXEC)
        # It runs as the workspace's uid, which no other live sandbox has (uids.py).
        argv = [
            str(sandbox.view.init_binary), "enter",
            str(workspace.uid), str(workspace.gid), *cgroup.procs_files, "--",
            *bwrap_options(sandbox.bwrap, sandbox.view, workspace.path, workspace.scratch,
                           network=network, seccomp_fd=SECCOMP_FD, ptys=ptys),
            "--", INIT_PATH, "serve", str(CONTROL_FD), *(["exclusive"] if exclusive else []),
        ]  # fmt: skip
        try:
            # Commands get stdio pipes of their own, over the control socket.
            proc = await Spawned.start(argv, {CONTROL_FD: inside.detach(), SECCOMP_FD: seccomp_fd})
        except BaseException:
            host.close()
            held.release()
            raise
        session = cls(proc, cgroup, workspace, host, network=network, exclusive=exclusive)
        session._held = held
        session.ptys = ptys
        try:
            await asyncio.wait_for(asyncio.shield(session._ready), START_TIMEOUT_S)
            session.init_pid = session._find_init()
            if not exclusive:
                session.netns_fd = os.open(
                    f"/proc/{session.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC
                )
        except BaseException as exc:
            session.kill()
            await proc.exited
            held.release()  # its cgroup was killed whole, and the caller removes it
            if not isinstance(exc, TimeoutError | SandboxError | OSError):
                raise  # cancelled (a warm pool's fill when the server stops, say)
            stderr = (await proc.errors.read()).decode(errors="replace").strip()
            raise SandboxError(f"the sandbox did not start: {stderr or exc}") from exc
        return session

    @property
    def busy(self) -> bool:
        """Whether a command is running."""
        return bool(self._running)

    @property
    def limits(self) -> SessionLimits:
        """The limits all commands of a persistent sandbox share."""
        if self._limits is None:
            raise SandboxError("this sandbox's commands have limits of their own")
        return self._limits

    def set_limits(self, limits: SessionLimits) -> None:
        self.cgroup.set_limits(
            limits.memory_bytes, limits.processes + SANDBOX_OWN_PROCESSES, limits.cpus
        )
        self.workspace.resize(limits.disk_mb)
        self._limits = limits

    def _find_init(self) -> int:
        """init's pid: the process of the cgroup that is not bwrap."""
        for pid in self.cgroup.pids():
            if pid != self.proc.pid:
                return pid
        raise SandboxError("the sandbox's init process is missing")

    # -- control channel -------------------------------------------------------

    def _on_control(self) -> None:
        while True:
            try:
                message = self._control.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self._ended()
                return
            kind, _, rest = message.partition(b" ")
            if kind == b"ready\n":
                self._ready.set_result(None)
                continue
            pid, _, detail = rest.partition(b" ")
            proc = self._running.pop(int(pid), None) if pid.isdigit() else None
            if proc is not None and not proc._status.done():
                proc._status.set_result(kind + b" " + detail)

    def _ended(self) -> None:
        """init is gone (killed, OOM, expired): every command ended with it."""
        if self.ended.is_set():
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self._control.fileno())
        self._control.close()
        if not self._ready.done():
            self._ready.set_exception(SandboxError("the sandbox ended while starting"))
        for proc in self._running.values():
            if not proc._status.done():
                proc._status.set_result(b"")
        self._running.clear()
        self.ended.set()

    def _send(self, message: bytes, fds: list[int] | None = None) -> None:
        if self.ended.is_set():
            raise SandboxError("the sandbox has ended")
        try:
            socket.send_fds(self._control, [message], fds or [])
        except BlockingIOError as exc:
            # init reads each message at once; a full buffer means it is stuck.
            raise SandboxError("the sandbox is not taking commands") from exc
        except OSError as exc:
            raise SandboxError("the sandbox has ended") from exc

    # -- commands -----------------------------------------------------------------

    async def exec(
        self,
        command: Command,
        limits: SandboxLimits,
        *,
        on_output: OutputCallback | None = None,
        capture: bool = True,
        stdin: StdinSource = None,
        accounting: RunCgroup | None = None,
    ) -> Process:
        """Starts a command. ``capture`` keeps its output (up to the output cap, which
        kills it when passed) for the result; servers stream it to ``on_output`` only.
        Given ``stdin`` is fed and closed; without it, the caller writes to the process.
        ``accounting``: the command's own cgroup (exclusive sandboxes)."""
        request = encode_command(command, limits)
        if len(request) > MAX_REQUEST:
            raise SandboxError(f"the command is too large (over {MAX_REQUEST} bytes)")
        cid = next(self._ids)
        message = f"run {cid}\n".encode()
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        given = [stdin_r, stdout_w, stderr_w]
        try:
            if len(request) <= MAX_INLINE_REQUEST:
                message += request
            else:
                given.append(os.memfd_create("execbox-command", os.MFD_CLOEXEC))
                write_all(given[-1], request)
            # Registered before it is sent: a quick command's exit may arrive at once.
            proc = Process(
                self, cid, await write_pipe(stdin_w), await read_pipe(stdout_r),
                await read_pipe(stderr_r),
            )  # fmt: skip
            self._running[cid] = proc
            self._send(message, given)
        except BaseException:
            unsent = self._running.pop(cid, None)
            if unsent is not None:
                unsent.close_stdin()
            raise
        finally:
            # The program's ends now live in init (and its child) only: EOF comes with it.
            for fd in given:
                os.close(fd)
        proc._task = asyncio.get_running_loop().create_task(
            proc._supervise(limits, on_output, capture, stdin, accounting)
        )
        return proc

    async def run(
        self, command: Command, limits: SandboxLimits, *, stdin: bytes | None = None
    ) -> SandboxResult:
        """Runs a command to its end, like a one-shot run."""
        proc = await self.exec(command, limits, stdin=stdin or b"")
        return await proc.wait()

    # -- the end ------------------------------------------------------------------

    def kill(self) -> None:
        """Kills every process of the sandbox at once (the cgroup, then bwrap)."""
        self.cgroup.kill()
        self.proc.kill()
        self._ended()

    async def shutdown(self) -> None:
        """Kills everything and frees the cgroup; the workspace stays."""
        self.kill()
        await self.proc.exited
        self.proc.close()
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        await self.cgroup.remove_async()
        if self._held is not None:  # its processes are gone with their cgroup
            await asyncio.to_thread(self._held.release)  # an unmount waits for RCU: ~1 ms

    async def close(self) -> None:
        """Kills everything, then frees the cgroup and the workspace (its disk)."""
        await self.shutdown()
        await asyncio.to_thread(self.workspace.destroy)


async def open_session(sandbox: Sandbox, limits: SessionLimits) -> Session:
    """A new long-lived sandbox with a fresh workspace and cgroup of its own."""
    # Names say which process owns them, so the engine's start-up sweep frees them
    # after a crash like any other workspace and cgroup.
    workspace = sandbox.new_workspace(limits.disk_mb)
    try:
        cgroup = sandbox.cgroups.create(owned_name())
    except BaseException:
        workspace.destroy()
        raise
    try:
        session = await Session.start(sandbox, workspace, cgroup)
        session.set_limits(limits)
        return session
    except BaseException:
        with contextlib.suppress(OSError):
            await cgroup.remove_async()
        workspace.destroy()
        raise
