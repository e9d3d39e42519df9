"""What a sandboxed command is, its limits and its result: the vocabulary shared by
the one-execution-at-a-time boxes (box.py) and persistent sandboxes (session.py)."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from execbox.engine.bwrap import WORKDIR
from execbox.engine.cgroups import CgroupStats
from execbox.engine.errors import SandboxError

READ_CHUNK = 65536
# After a kill, how long the program's pipes may take to close, and init to report.
KILL_GRACE_S = 2.0
# bwrap (outside) and execbox-init (PID 1) live in the command's cgroup too: pids.max
# is the caller's `processes` plus these, so that `processes` counts the program's own.
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


class Outcome(StrEnum):
    """How a command ended, in the engine's own words (the runner says what it means)."""

    EXITED = "exited"  # by itself: see exit_code
    SIGNALLED = "signalled"  # by a signal of its own making (a crash, an abort)
    KILLED = "killed"  # by the host, asked to (a cancel, the sandbox ending)
    KILLED_FOR_TIME = "killed_for_time"  # CPU or wall time limit
    KILLED_FOR_MEMORY = "killed_for_memory"  # the cgroup's OOM killer
    KILLED_FOR_OUTPUT = "killed_for_output"  # the output cap, or the file size limit
    UNREPORTED = "unreported"  # the sandbox ended without telling how the command did


@dataclass
class SandboxResult:
    outcome: Outcome
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


class CappedOutput:
    """Collects one output stream up to its cap."""

    def __init__(self, name: str, cap: int, on_output: OutputCallback | None) -> None:
        self.name, self.cap, self.on_output = name, cap, on_output
        # One buffer, not a list of chunks: one-byte writes would cost ~50 bytes each.
        self.buffer = bytearray()
        self.truncated = False

    @property
    def size(self) -> int:
        return len(self.buffer)

    def add(self, data: bytes) -> bool:
        """Keeps what fits; returns False once the cap is passed."""
        room = self.cap - self.size
        if len(data) > room:
            data, self.truncated = data[:room], True
        if data:
            self.buffer += data
            if self.on_output is not None:
                self.on_output(self.name, data)
        return not self.truncated

    def value(self) -> bytes:
        return bytes(self.buffer)


def make_result(
    status_line: bytes,
    stats: CgroupStats,
    limits: SandboxLimits,
    out: CappedOutput,
    err: CappedOutput,
    killed_for: list[Outcome],
    host_wall: float,
) -> SandboxResult:
    """The result of a command from init's status line ("exit STATUS WALL_US ...", less
    the command's id) and the host's own observations (stats, why the host killed it)."""
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
        outcome, message = Outcome.KILLED_FOR_MEMORY, "killed: out of memory"
    elif killed_for:
        outcome = killed_for[0]
        message = {
            Outcome.KILLED_FOR_TIME: (
                f"killed: CPU time limit of {limits.cpu_time_s:g}s"
                if cpu >= limits.cpu_time_s
                else f"killed: wall time limit of {limits.wall_time_s:g}s"
            ),
            Outcome.KILLED_FOR_OUTPUT: f"killed: output passed {limits.output_bytes} bytes",
        }.get(outcome)
    elif sig == signal.SIGXCPU or cpu > limits.cpu_time_s:
        outcome, message = Outcome.KILLED_FOR_TIME, f"CPU time limit of {limits.cpu_time_s:g}s"
    elif sig == signal.SIGXFSZ:
        outcome = Outcome.KILLED_FOR_OUTPUT
        message = f"file size limit of {limits.file_size_bytes} bytes"
    elif exit_code is None and sig is None:
        outcome = Outcome.UNREPORTED
        message = message or "the sandbox ended without reporting the program's status"
    elif sig is None:
        outcome = Outcome.EXITED
    else:
        outcome = Outcome.SIGNALLED
        message = f"killed by signal {sig} ({signal.Signals(sig).name})"
    return SandboxResult(
        outcome=outcome,
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
