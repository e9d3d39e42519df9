"""One cgroup per sandboxed process tree, on cgroup v1 or v2.

Hand-written because no library covers both hierarchies well. A run's cgroup
carries its memory (with swap), pids and CPU limits, gives its accounting
(CPU time of every thread, peak memory, OOM kills) and is how the whole tree is
killed at the end. Judge0 broke on v2; both paths live here behind one
interface, and detection reads the kernel's own mount table.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from execbox.engine.errors import SandboxUnavailable

V1_CONTROLLERS = ("memory", "pids", "cpuacct", "cpu")
# Where the processes of a container's root cgroup go so that it can delegate (v2).
SERVER_LEAF = "execbox-server"
REMOVE_ATTEMPTS = 400
REMOVE_PAUSE_S = 0.005
V2_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100000
CFS_MIN_QUOTA_US = 1000  # the kernel's minimum (1 ms per period)
DEFAULT_CPU_WEIGHT = 100  # cgroup v2's default; v1's cpu.shares default is 1024


def _quota_us(cpus: float) -> int:
    return max(CFS_MIN_QUOTA_US, int(cpus * CFS_PERIOD_US))


@dataclass(frozen=True)
class CgroupStats:
    cpu_ns: int
    memory_peak_bytes: int
    oom_kills: int


# Plain system calls, not Python's open(): a buffered file object costs four more
# (fstat, isatty's ioctl, lseek...) per access, and a run makes dozens of accesses.
def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    """Parses 'key value' lines (memory.events, cpu.stat, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


class RunCgroup(ABC):
    """The cgroup(s) of one sandboxed process tree."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    @property
    def procs_files(self) -> list[str]:
        """The files a process writes itself into to join this run (every hierarchy)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    @abstractmethod
    def set_limits(self, memory_bytes: int, pids: int, cpus: float | None = None) -> None: ...

    @abstractmethod
    def start_accounting(self) -> None:
        """Marks the start of the measured command (resets or records a baseline)."""

    @abstractmethod
    def cpu_ns(self) -> int: ...

    @abstractmethod
    def stats(self) -> CgroupStats: ...

    @abstractmethod
    def _procs_dir(self) -> Path: ...

    def adopt(self, pids: list[int], dirs: list[Path] | None = None) -> None:
        """Moves processes (of a box between its commands) into this cgroup, or into
        ``dirs`` of it; what they were charged for stays with their old one."""
        for d in self.dirs if dirs is None else dirs:
            for pid in pids:
                _write(d / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            text = _read(self._procs_dir() / "cgroup.procs")
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def kill(self) -> None:
        """SIGKILLs every process of the run, in one pass that never blocks the caller's
        event loop. The list holds the sandbox's PID 1, whose death takes its whole pid
        namespace with it, so a child forked meanwhile dies too; removal (try_remove)
        kills again until the cgroup is empty."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def try_remove(self) -> bool:
        """Kills what is left and removes the directories; False while still busy."""
        self.kill()
        try:
            for d in self.dirs:
                with contextlib.suppress(FileNotFoundError):
                    d.rmdir()
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            return False
        return True

    def remove(self) -> None:
        for _ in range(REMOVE_ATTEMPTS):
            if self.try_remove():
                return
            time.sleep(REMOVE_PAUSE_S)
        raise OSError(errno.EBUSY, f"cgroup {self.dirs[0]} stays busy")

    async def remove_async(self) -> None:
        for _ in range(REMOVE_ATTEMPTS):
            if self.try_remove():
                return
            await asyncio.sleep(REMOVE_PAUSE_S)
        raise OSError(errno.EBUSY, f"cgroup {self.dirs[0]} stays busy")


class V1RunCgroup(RunCgroup):
    def __init__(self, dirs: dict[str, Path]) -> None:
        # Controllers mounted together (cpu,cpuacct on systemd hosts) share one directory.
        super().__init__(list(dict.fromkeys(dirs.values())))
        self.by_controller = dirs
        self._memory = dirs["memory"]

    def _procs_dir(self) -> Path:
        return self.by_controller["pids"]

    def set_limits(self, memory_bytes: int, pids: int, cpus: float | None = None) -> None:
        mem = self._memory
        # memsw must stay >= limit: shrink limit before memsw, grow memsw before limit.
        memsw = mem / "memory.memsw.limit_in_bytes"
        current = int(_read(mem / "memory.limit_in_bytes"))
        order = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        if memory_bytes > current:
            order.reverse()
        for name in order:
            if name == "memory.memsw.limit_in_bytes" and not memsw.exists():
                continue  # swap accounting off: no swap to limit
            _write(mem / name, str(memory_bytes))
        _write(self.by_controller["pids"] / "pids.max", str(pids))
        # Written either way: a renewed cgroup keeps the cpu directory of the command
        # before (see CgroupManager.renew), and with it that command's quota.
        cpu = self.by_controller["cpu"]
        if cpus is not None:
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", "-1" if cpus is None else str(_quota_us(cpus)))

    def start_accounting(self) -> None:
        _write(self.by_controller["cpuacct"] / "cpuacct.usage", "0")
        _write(self._memory / "memory.max_usage_in_bytes", "0")

    def cpu_ns(self) -> int:
        return int(_read(self.by_controller["cpuacct"] / "cpuacct.usage"))

    def stats(self) -> CgroupStats:
        oom = _keyed(_read(self._memory / "memory.oom_control")).get("oom_kill", 0)
        return CgroupStats(
            cpu_ns=self.cpu_ns(),
            memory_peak_bytes=int(_read(self._memory / "memory.max_usage_in_bytes")),
            oom_kills=oom,
        )


class V2RunCgroup(RunCgroup):
    def __init__(self, path: Path) -> None:
        super().__init__([path])
        self.path = path
        self._cpu_base_ns = 0

    def _procs_dir(self) -> Path:
        return self.path

    def set_limits(self, memory_bytes: int, pids: int, cpus: float | None = None) -> None:
        _write(self.path / "memory.max", str(memory_bytes))
        if (self.path / "memory.swap.max").exists():
            _write(self.path / "memory.swap.max", "0")
        _write(self.path / "pids.max", str(pids))
        if cpus is not None:
            _write(self.path / "cpu.max", f"{_quota_us(cpus)} {CFS_PERIOD_US}")

    def start_accounting(self) -> None:
        # v2 counters cannot be reset: remember where the command started.
        self._cpu_base_ns = self._usage_ns()

    def _usage_ns(self) -> int:
        return _keyed(_read(self.path / "cpu.stat")).get("usage_usec", 0) * 1000

    def cpu_ns(self) -> int:
        return self._usage_ns() - self._cpu_base_ns

    def stats(self) -> CgroupStats:
        peak_file = self.path / "memory.peak"
        peak = int(_read(peak_file if peak_file.exists() else self.path / "memory.current"))
        events = _keyed(_read(self.path / "memory.events"))
        return CgroupStats(self.cpu_ns(), peak, events.get("oom_kill", 0))

    def kill(self) -> None:
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(FileNotFoundError):
                _write(kill_file, "1")
        super().kill()


class CgroupManager(ABC):
    """Creates run cgroups under one parent per hierarchy."""

    version: int

    @abstractmethod
    def parent_dirs(self) -> list[Path]: ...

    def sweep(self, is_stale: Callable[[str], bool]) -> None:
        """Removes left-over run cgroups (of dead processes), killing what is in them."""
        for parent in self.parent_dirs():
            for child in parent.iterdir() if parent.exists() else ():
                if child.is_dir() and is_stale(child.name):
                    with contextlib.suppress(OSError):
                        self._wrap(child).remove()

    @abstractmethod
    def _wrap(self, path: Path) -> RunCgroup:
        """The run cgroup at ``path`` (one hierarchy's directory of it)."""

    @abstractmethod
    def create(self, name: str) -> RunCgroup: ...

    @abstractmethod
    def renew(self, run: RunCgroup, name: str) -> RunCgroup:
        """The cgroup for the next command of ``run``'s processes: new where accounting
        cannot be reset (memory: its peak and page-cache charges), ``run``'s own
        directories elsewhere (their counters are reset by start_accounting)."""

    @abstractmethod
    def setup(self, cpu_weight: int = DEFAULT_CPU_WEIGHT) -> None:
        """Creates the parent cgroup(s), weighing all sandboxes together at ``cpu_weight``
        (v2 units) against the rest of the host; fails with what to do when it cannot."""


class V1Manager(CgroupManager):
    version = 1

    def __init__(self, mounts: dict[str, Path], parent: str) -> None:
        self.parents = {c: mounts[c] / parent for c in V1_CONTROLLERS}

    def parent_dirs(self) -> list[Path]:
        return list(self.parents.values())

    def _wrap(self, path: Path) -> RunCgroup:
        return V1RunCgroup({c: p / path.name for c, p in self.parents.items()})

    def setup(self, cpu_weight: int = DEFAULT_CPU_WEIGHT) -> None:
        for parent in self.parents.values():
            parent.mkdir(parents=True, exist_ok=True)
        memory = self.parents["memory"]
        with contextlib.suppress(OSError):
            _write(memory / "memory.use_hierarchy", "1")
        shares = max(2, cpu_weight * 1024 // DEFAULT_CPU_WEIGHT)  # v1: 1024 is the default
        _write(self.parents["cpu"] / "cpu.shares", str(shares))

    def create(self, name: str) -> RunCgroup:
        dirs = {c: p / name for c, p in self.parents.items()}
        for d in dict.fromkeys(dirs.values()):  # once per hierarchy (cpu,cpuacct share one)
            d.mkdir()
        return V1RunCgroup(dirs)

    def renew(self, run: RunCgroup, name: str) -> RunCgroup:
        assert isinstance(run, V1RunCgroup)
        memory = self.parents["memory"] / name
        memory.mkdir()
        return V1RunCgroup({**run.by_controller, "memory": memory})


class V2Manager(CgroupManager):
    version = 2

    def __init__(self, mount: Path, parent: str) -> None:
        self.mount = mount
        self.parent = mount / parent

    def parent_dirs(self) -> list[Path]:
        return [self.parent]

    def _wrap(self, path: Path) -> RunCgroup:
        return V2RunCgroup(path)

    def setup(self, cpu_weight: int = DEFAULT_CPU_WEIGHT) -> None:
        wanted = set(V2_CONTROLLERS)
        available = set(_read(self.mount / "cgroup.controllers").split())
        missing = wanted - available
        if missing:
            raise SandboxUnavailable(
                f"cgroup v2 at {self.mount} lacks the controllers {sorted(missing)}; "
                "enable them in the parent's cgroup.subtree_control (or run execbox in a "
                "container/unit with cgroup delegation)"
            )
        self.parent.mkdir(exist_ok=True)
        enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
        for level in (self.mount, self.parent):
            enabled = set(_read(level / "cgroup.subtree_control").split())
            if wanted <= enabled:
                continue
            try:
                _write(level / "cgroup.subtree_control", enable)
            except OSError as exc:
                if exc.errno != errno.EBUSY or level != self.mount:
                    raise
                # A container's cgroup namespace root holding processes (ours among
                # them) may not delegate controllers: "no internal processes". Move
                # them to a leaf, as container init systems do, then delegate.
                self._evacuate_root()
                _write(level / "cgroup.subtree_control", enable)
        _write(self.parent / "cpu.weight", str(cpu_weight))

    def _evacuate_root(self) -> None:
        leaf = self.mount / SERVER_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in _read(self.mount / "cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError, OSError):
                _write(leaf / "cgroup.procs", pid)

    def create(self, name: str) -> RunCgroup:
        path = self.parent / name
        path.mkdir()
        return V2RunCgroup(path)

    def renew(self, run: RunCgroup, name: str) -> RunCgroup:
        return self.create(name)  # one directory carries every controller


def _mountinfo(path: Path) -> list[tuple[Path, str, set[str]]]:
    """(mount point, fs type, super options) of each cgroup mount."""
    found = []
    for line in _read(path).splitlines():
        pre, _, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mount_point = Path(fields[4].replace("\\040", " "))
        found.append((mount_point, tail[0], set(tail[2].split(","))))
    return found


def detect(
    version: str = "auto",
    mount: Path = Path("/sys/fs/cgroup"),
    parent: str = "execbox",
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> CgroupManager:
    """Picks the hierarchy that can carry our limits.

    v2 when a cgroup2 mount offers the memory and pids controllers (pure v2 hosts);
    v1 when the memory, pids and cpuacct controllers are mounted as v1 (v1 hosts and
    hybrids, whose cgroup2 mount at .../unified has no controllers).
    """
    mounts = [m for m in _mountinfo(mountinfo) if m[0].is_relative_to(mount)]
    v1 = {}
    for point, fstype, options in mounts:
        if fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in options:
                    v1[controller] = point
    v2_points = [point for point, fstype, _ in mounts if fstype == "cgroup2"]
    v2_usable = [
        p for p in v2_points if {"memory", "pids"} <= set(_read(p / "cgroup.controllers").split())
    ]
    if version in ("auto", "2") and v2_usable:
        return V2Manager(v2_usable[0], parent)
    if version in ("auto", "1") and all(c in v1 for c in V1_CONTROLLERS):
        return V1Manager(v1, parent)
    raise SandboxUnavailable(
        f"no usable cgroup hierarchy under {mount} (asked for version {version}): execbox "
        "needs the memory, pids and cpu controllers, as root. Mount cgroup2 with those "
        "controllers, or the v1 memory, pids, cpu and cpuacct hierarchies."
    )
