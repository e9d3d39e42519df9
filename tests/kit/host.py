"""The host around the sandbox in tests: sandbox uids claimed per test session, the
processes that run as them, and guards that the host is untouched after a hostile
program."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from execbox.config import Settings
from execbox.engine.box import Box
from execbox.engine.uids import CLAIMS_DIR, uids_in_use
from execbox.runner import Runner

# Each runner or server of a test session runs its sandboxes as a block of uids of its
# own, claimed from these (far from the default 60100..61099): a process of a block's uid
# on the host can only be a survivor of that very runner or server, never a real
# server's, nor another test session's running at the same time.
TEST_UID_BLOCK = 64
TEST_UID_BLOCKS = range(3_000_000, 3_000_000 + 1024 * TEST_UID_BLOCK, TEST_UID_BLOCK)

# Services on the host's loopback that a sandboxed program must never reach.
HOST_SERVICES = {"redis": 6379, "postgresql": 5432}

# Host files a hostile program would like to read or change.
WATCHED_FILES = ("/etc/passwd", "/etc/shadow", "/etc/hosts", "/etc/hostname", "/etc/group")
# Names hostile programs try to create on the host; none may ever appear.
PWNED_NAME = "execbox-pwned"
PWNED_DIRS = ("/", "/etc", "/usr", "/usr/bin", "/bin", "/tmp", "/var/tmp", "/root", "/dev")

# Uses up what the kernel counts per host user (inotify instances, pipe buffer pages,
# queued signals), says how far it got, then holds it all until its stdin closes.
PER_USER_HOG = r"""
import ctypes, errno, fcntl, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032

inotify = []
while len(inotify) < 1000:
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        inotify_errno = ctypes.get_errno()
        break
    inotify.append(fd)

pipes = []
while len(pipes) < 1000:
    r, w = os.pipe()
    pipes.append((r, w))
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    except OSError as exc:
        pipe_errno = exc.errno
        break
r, w = os.pipe()
shrunk_pipe = fcntl.fcntl(w, F_GETPIPE_SZ)

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
queued = 0
while queued < 1_000_000 and libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(0)) == 0:
    queued += 1
sigqueue_errno = ctypes.get_errno()

print(json.dumps({
    "inotify": len(inotify), "inotify_errno": inotify_errno,
    "big_pipes": len(pipes) - 1, "pipe_errno": pipe_errno, "new_pipe_size": shrunk_pipe,
    "queued": queued, "sigqueue_errno": sigqueue_errno,
}), flush=True)
sys.stdin.read()
print("released")
"""

# What every program expects of a fresh process: each call works.
PER_USER_PROBE = r"""
import ctypes, fcntl, json, os, signal
libc = ctypes.CDLL(None, use_errno=True)
report = {}
fd = libc.inotify_init1(os.O_CLOEXEC)
report["inotify_init1"] = "ok" if fd >= 0 else os.strerror(ctypes.get_errno())
r, w = os.pipe()
report["pipe_size"] = fcntl.fcntl(w, 1032)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
ok = libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(0)) == 0
report["sigqueue"] = "ok" if ok else os.strerror(ctypes.get_errno())
timer = ctypes.c_void_p()
ok = libc.timer_create(1, None, ctypes.byref(timer)) == 0
report["timer_create"] = "ok" if ok else os.strerror(ctypes.get_errno())
print(json.dumps(report))
"""
# What PER_USER_PROBE prints when nothing was taken from it.
PER_USER_PROBE_OK = {
    "inotify_init1": "ok",
    "pipe_size": 65536,
    "sigqueue": "ok",
    "timer_create": "ok",
}


# -- the host ---------------------------------------------------------------


async def resets_done(runner: Runner) -> None:
    """Waits for the resets (and frees) of boxes whose executions ended."""
    await runner.sandbox.settle()


async def the_box(runner: Runner) -> Box:
    """The pool's one idle box (of a pool of one), once the last execution's reset is done."""
    await resets_done(runner)
    idle = runner.sandbox.idle_boxes
    assert len(idle) == 1, idle
    return idle[0]


def _status(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}


@dataclass
class UidClaim:
    """A block of sandbox uids (gids alike) no other test runner or server uses, until
    ``release()`` (or the end of the test process)."""

    uids: range
    lock: IO[str]

    @property
    def settings(self) -> dict[str, int]:
        """The Settings fields that make a runner use these uids."""
        return {
            "sandbox_uid": self.uids.start,
            "sandbox_gid": self.uids.start,
            "sandbox_uid_count": len(self.uids),
        }

    @property
    def env(self) -> dict[str, str]:
        """The same, for a server's environment."""
        return {f"EXECBOX_{name.upper()}": str(value) for name, value in self.settings.items()}

    def release(self) -> None:
        self.lock.close()


def claim_uids() -> UidClaim:
    """The first block of TEST_UID_BLOCKS whose lock is free and none of whose uids a
    process runs as; its lock is held until released."""
    busy = uids_in_use()
    for start in TEST_UID_BLOCKS:
        block = range(start, start + TEST_UID_BLOCK)
        if not busy.isdisjoint(block):
            continue
        lock = open(f"/tmp/execbox-tests-uids-{start}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return UidClaim(block, lock)
    raise RuntimeError(f"no free block of sandbox uids in {TEST_UID_BLOCKS}")


def settings_uids(settings: Settings) -> range:
    """The uids a runner's sandboxes run as."""
    return range(settings.sandbox_uid, settings.sandbox_uid + settings.sandbox_uid_count)


def env_uids(env: dict[str, str]) -> range:
    """The uids a server's sandboxes run as."""
    start = int(env["EXECBOX_SANDBOX_UID"])
    return range(start, start + int(env["EXECBOX_SANDBOX_UID_COUNT"]))


def sandbox_pids(uids: range) -> list[int]:
    """Every live host process that runs as one of ``uids`` (real, effective or saved).

    Zombies are left out: a dead process whose exit status its new parent has not
    collected yet runs nothing and holds nothing (when a box is killed, its init can
    outlive bwrap by a moment and is reparented to the host's PID 1, which reaps it).
    """
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        status = _status(pid)
        if any(int(v) in uids for v in status.get("Uid", "").split()) and not status.get(
            "State", ""
        ).startswith("Z"):
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
        await runner.sandbox.settle()
        found = problems()
        if not found or loop.time() > deadline:
            return found
        await asyncio.sleep(0.05)


class HostGuard:
    """What a hostile program must leave as it was: checked after each hostile test."""

    def __init__(self, runner: Runner, *more: Runner) -> None:
        """``more``: other runners alive meanwhile (with the same sandbox uids)."""
        self.runner = runner
        self.runners = (runner, *more)
        self.digests: dict[str, str | None] = {}
        self.hostname = ""
        self.ports: dict[str, bool] = {}

    async def snapshot(self) -> None:
        self.digests = {path: file_digest(path) for path in WATCHED_FILES}
        self.hostname = socket.gethostname()
        self.ports = {name: port_answers(port) for name, port in HOST_SERVICES.items()}

    def _warm(self) -> tuple[set[int], set[str], set[str], set[int]]:
        """Processes, cgroup names, workspace and pty mount names, and uids of the pool's
        idle boxes."""
        pids: set[int] = set()
        cgroups: set[str] = set()
        mounts: set[str] = set()
        uids: set[int] = set()
        for box in (box for r in self.runners for box in r.sandbox.idle_boxes):
            pids.update(box.session.cgroup.pids())
            pids.add(box.session.proc.pid)
            cgroups.update(d.name for d in box.session.cgroup.dirs)
            mounts.update({box.workspace.path.name, box.workspace.scratch.name})
            if box.session.ptys is not None:
                mounts.add(box.session.ptys.name)
            uids.add(box.workspace.uid)
        return pids, cgroups, mounts, uids

    def _leftovers(self) -> list[str]:
        warm_pids, warm_cgroups, warm_mounts, warm_uids = self._warm()
        uids = settings_uids(self.runner.settings)
        problems = [
            f"sandbox process survived its run: {pid}: {cmdline(pid)}"
            for pid in sandbox_pids(uids)
            if pid not in warm_pids
        ]
        claimed = {int(p.name) for p in CLAIMS_DIR.iterdir() if int(p.name) in uids}
        if claimed - warm_uids:
            problems.append(f"sandbox uids still claimed: {sorted(claimed - warm_uids)}")
        settings = self.runner.settings
        for parent in Path(settings.cgroup_mount).glob(f"*/{settings.cgroup_name}"):
            left = {d.name for d in parent.iterdir() if d.is_dir()} - warm_cgroups
            if left:
                problems.append(f"run cgroups left behind in {parent}: {sorted(left)}")
        for kind, place in (("workspaces", settings.workspaces_dir), ("ptys", settings.ptys_dir)):
            left = {p.name for p in place.iterdir()} - warm_mounts
            if left:
                problems.append(f"{kind} left behind: {sorted(left)}")
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
