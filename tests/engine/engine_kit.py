"""Helpers of the engine suite (imported by conftest.py and the test modules)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from execbox.models import ExecutionRequest, ExecutionResult, Stage
from execbox.runner import Runner
from execbox.sandbox.box import Box

# The session's sandbox uid is claimed from this range (not the default 60100), so that a
# process of that uid on the host can only be a survivor of this very session: never a
# server's, nor another test session's running at the same time.
TEST_UID_RANGE = range(61000, 62000)

# Services on the host's loopback that a sandboxed program must never reach.
HOST_SERVICES = {"redis": 6379, "postgresql": 5432}

# Host files a hostile program would like to read or change.
WATCHED_FILES = ("/etc/passwd", "/etc/shadow", "/etc/hosts", "/etc/hostname", "/etc/group")
# Names hostile programs try to create on the host; none may ever appear.
PWNED_NAME = "execbox-pwned"
PWNED_DIRS = ("/", "/etc", "/usr", "/usr/bin", "/bin", "/tmp", "/var/tmp", "/root", "/dev")


async def execute(runner: Runner, language: str, code: str, **fields: Any) -> ExecutionResult:
    """Runs ``code`` through the real runner."""
    return await runner.execute(ExecutionRequest(language=language, code=code, **fields))


def run_stage(result: ExecutionResult) -> Stage:
    """The run stage, failing with the whole result when there is none."""
    assert result.run is not None, describe(result)
    return result.run


def stdout(result: ExecutionResult) -> str:
    return run_stage(result).stdout


def describe(result: ExecutionResult) -> str:
    """A short account of a result, for assertion messages."""

    def stage(s: Stage | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {
            "verdict": s.verdict,
            "exit": s.exit_code,
            "signal": s.signal,
            "cpu_ms": s.cpu_time_ms,
            "wall_ms": s.wall_time_ms,
            "mem_kb": s.memory_kb,
            "stdout": s.stdout[:400],
            "stderr": s.stderr[-800:],
            "message": s.message,
        }

    return json.dumps(
        {
            "verdict": result.verdict,
            "compile": stage(result.compile),
            "run": stage(result.run),
            "tests": [stage(t) for t in result.tests or []],
            "error": result.error.model_dump() if result.error else None,
        },
        indent=1,
        default=str,
    )


def json_lines(text: str) -> dict[str, Any]:
    """The last line of a program's stdout, parsed as JSON."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, f"no output: {text!r}"
    value: dict[str, Any] = json.loads(lines[-1])
    return value


async def resets_done(runner: Runner) -> None:
    """Waits for the resets (and frees) of boxes whose executions ended."""
    while runner.sandbox._cleanups:
        await asyncio.gather(*list(runner.sandbox._cleanups))


async def the_box(runner: Runner) -> Box:
    """The pool's one idle box (of a pool of one), once the last execution's reset is done."""
    await resets_done(runner)
    idle = list(runner.sandbox._idle)
    assert len(idle) == 1, idle
    return idle[0]


# -- the host ---------------------------------------------------------------


def _status(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}


def claim_uid() -> tuple[int, IO[str]]:
    """A sandbox uid no other session uses: the first free lock of the range, held until
    the returned file is closed. A uid some process runs as already is skipped."""
    busy = {int(v) for pid in os.listdir("/proc") if pid.isdigit()
            for v in _status(pid).get("Uid", "").split()}  # fmt: skip
    for uid in TEST_UID_RANGE:
        if uid in busy:
            continue
        lock = open(f"/tmp/execbox-engine-tests-uid-{uid}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return uid, lock
    raise RuntimeError(f"no free sandbox uid in {TEST_UID_RANGE}")


def sandbox_pids(uid: int) -> list[int]:
    """Every live host process that runs as the sandbox uid (real, effective or saved).

    Zombies are left out: a dead process whose exit status its new parent has not
    collected yet runs nothing and holds nothing (when a box is killed, its init can
    outlive bwrap by a moment and is reparented to the host's PID 1, which reaps it).
    """
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        status = _status(pid)
        uids = {int(v) for v in status.get("Uid", "").split()}
        if uid in uids and not status.get("State", "").startswith("Z"):
            found.append(int(pid))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def file_digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def pwned_files() -> list[str]:
    found = []
    for directory in PWNED_DIRS:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        found += [os.path.join(directory, n) for n in names if n.startswith(PWNED_NAME)]
    return found


async def settled(
    runner: Runner, problems: Callable[[], list[str]], patience_s: float = 10.0
) -> list[str]:
    """``problems()`` once the sandbox has finished its cleanup: the warm pool refilled,
    background reaping done, SIGKILLed processes gone (delivery is asynchronous, so a
    few retries are allowed; a real survivor stays and is reported)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        await runner.sandbox.warm_up()
        cleanups = list(getattr(runner.sandbox, "_cleanups", ()))
        if cleanups:
            await asyncio.gather(*cleanups, return_exceptions=True)
        found = problems()
        if not found or loop.time() > deadline:
            return found
        await asyncio.sleep(0.05)


class HostGuard:
    """What a hostile program must leave as it was: checked after each hostile test."""

    def __init__(self, runner: Runner, *more: Runner) -> None:
        """``more``: other runners alive meanwhile (with the same sandbox uid)."""
        self.runner = runner
        self.runners = (runner, *more)
        self.digests: dict[str, str | None] = {}
        self.hostname = ""
        self.ports: dict[str, bool] = {}

    async def snapshot(self) -> None:
        self.digests = {path: file_digest(path) for path in WATCHED_FILES}
        self.hostname = socket.gethostname()
        self.ports = {name: port_answers(port) for name, port in HOST_SERVICES.items()}

    def _warm(self) -> tuple[set[int], set[str], set[str]]:
        """Processes, cgroup names and workspace names of the pool's idle boxes."""
        pids: set[int] = set()
        cgroups: set[str] = set()
        workspaces: set[str] = set()
        for box in (box for r in self.runners for box in list(r.sandbox._idle)):
            pids.update(box.session.cgroup.pids())
            pids.add(box.session.proc.pid)
            cgroups.update(d.name for d in box.session.cgroup.dirs)
            workspaces.update({box.workspace.path.name, box.workspace.scratch.name})
        return pids, cgroups, workspaces

    def _leftovers(self) -> list[str]:
        warm_pids, warm_cgroups, warm_workspaces = self._warm()
        problems = [
            f"sandbox process survived its run: {pid}: {cmdline(pid)}"
            for pid in sandbox_pids(self.runner.settings.sandbox_uid)
            if pid not in warm_pids
        ]
        settings = self.runner.settings
        for parent in Path(settings.cgroup_mount).glob(f"*/{settings.cgroup_name}"):
            left = {d.name for d in parent.iterdir() if d.is_dir()} - warm_cgroups
            if left:
                problems.append(f"run cgroups left behind in {parent}: {sorted(left)}")
        left_ws = {p.name for p in settings.workspaces_dir.iterdir()} - warm_workspaces
        if left_ws:
            problems.append(f"workspaces left behind: {sorted(left_ws)}")
        return problems

    async def check(self, patience_s: float = 10.0) -> None:
        """Asserts that the host is as it was: no survivor, nothing left, nothing changed."""
        for other in self.runners[1:]:
            await settled(other, list, patience_s)
        problems = await settled(self.runner, self._leftovers, patience_s)
        assert not problems, "\n".join(problems)
        for path, digest in self.digests.items():
            assert file_digest(path) == digest, f"host file {path} changed"
        assert not pwned_files(), f"a program created files on the host: {pwned_files()}"
        assert socket.gethostname() == self.hostname
        for name, port in HOST_SERVICES.items():
            if self.ports[name]:
                assert port_answers(port), f"host {name} on port {port} stopped answering"
