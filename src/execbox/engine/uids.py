"""Host uids for sandboxes: each workspace (a box's, a persistent sandbox's) and every
process over it run as a uid and gid of their own, taken from a configured range.

Several kernel limits are counted per host user, not per process or cgroup: inotify
instances and watches, epoll watches, queued signals (RLIMIT_SIGPENDING), pipe buffer
pages, user and network namespaces. Sandboxes sharing a uid share those limits, and
one of them could use them up for all the others; so, as isolate and go-judge do,
no two live sandboxes ever share a uid.

A uid is claimed across every execbox process of the host (a server, its workers, a
CLI run) with an flock on a file named after it in CLAIMS_DIR. The claim lasts while
anything of its holder may run or hold kernel objects: its workspace is mounted, or a
session over it has not been shut down (its processes killed and their cgroup
removed). A claim given up that way removes its file. A file found left behind is the
claim of a process that died: its uid is taken again only once no process runs as it.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import threading
from pathlib import Path

from execbox.engine.errors import SandboxBusy, SandboxUnavailable

# Host-wide, like the uids themselves: every execbox process of the host claims here,
# whatever its runtime dir.
CLAIMS_DIR = Path("/run/execbox-uids")


def uids_in_use() -> set[int]:
    """Every uid (real, effective, saved or file-system) some live process has."""
    found: set[int] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    found.update(int(uid) for uid in line.split()[1:])
                    break
    return found


def _check_unused(uids: range, gids: range) -> None:
    """Refuses ranges that include root or an account or group of the host."""
    taken = [f"user {u.pw_name} ({u.pw_uid})" for u in pwd.getpwall() if u.pw_uid in uids]
    taken += [f"group {g.gr_name} ({g.gr_gid})" for g in grp.getgrall() if g.gr_gid in gids]
    if 0 in uids or 0 in gids:
        taken.insert(0, "root (0)")
    if taken:
        raise SandboxUnavailable(
            f"sandboxes run as host uids {uids.start}..{uids[-1]} and gids "
            f"{gids.start}..{gids[-1]}, which must be nobody else's, but {', '.join(taken)} "
            "is in them: set EXECBOX_SANDBOX_UID, EXECBOX_SANDBOX_GID and "
            "EXECBOX_SANDBOX_UID_COUNT to a free range"
        )


class UidLease:
    """A uid (and gid) claimed for one workspace; held by the workspace and by each
    session over it, and given back when the last of them lets go."""

    def __init__(self, pool: UidPool, uid: int, gid: int) -> None:
        self._pool = pool
        self.uid = uid
        self.gid = gid
        self._holders = 1

    def hold(self) -> None:
        with self._pool.lock:
            if self._holders == 0:
                raise RuntimeError(f"uid {self.uid} was given back already")
            self._holders += 1

    def release(self) -> None:
        """Lets go; call only when nothing of this holder can run any more."""
        with self._pool.lock:
            self._holders -= 1
            if self._holders == 0:
                self._pool.give_back(self.uid)


class UidPool:
    """The range [base, base + count) of host uids (gids from gid_base alike)."""

    def __init__(self, base: int, gid_base: int, count: int) -> None:
        self.uids = range(base, base + count)
        self.gid_base = gid_base
        self.lock = threading.Lock()
        self._claims: dict[int, int] = {}  # uid -> the fd of its locked claim file
        self._next = 0  # where the search starts: the uid given back last is taken last
        _check_unused(self.uids, range(gid_base, gid_base + count))
        CLAIMS_DIR.mkdir(mode=0o700, exist_ok=True)
        self._sweep_abandoned()

    def _sweep_abandoned(self) -> None:
        """Removes the claims of the range that dead processes left, once nothing runs
        as their uid (as the engine sweeps their workspaces and cgroups)."""
        names = (p.name for p in CLAIMS_DIR.iterdir())
        left = [int(name) for name in names if name.isdigit() and int(name) in self.uids]
        if not left:
            return
        in_use = uids_in_use()
        for uid in left:
            fd = None if uid in in_use else self._lock_claim(uid)
            if fd is not None:
                (CLAIMS_DIR / str(uid)).unlink()
                os.close(fd)

    def acquire(self) -> UidLease:
        """A uid no other live sandbox of this host runs as; SandboxBusy when none is."""
        with self.lock:
            in_use: set[int] | None = None  # read once, if a claim was left behind
            for step in range(len(self.uids)):
                uid = self.uids[(self._next + step) % len(self.uids)]
                if uid in self._claims:
                    continue
                fd = self._lock_claim(uid)
                if fd is None:
                    continue
                if os.fstat(fd).st_size:  # left by a process that died holding it
                    if in_use is None:
                        in_use = uids_in_use()
                    if uid in in_use:
                        os.close(fd)
                        continue
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._claims[uid] = fd
                self._next = (self._next + step + 1) % len(self.uids)
                return UidLease(self, uid, uid - self.uids.start + self.gid_base)
        raise SandboxBusy(
            f"all {len(self.uids)} sandbox uids ({self.uids.start}..{self.uids[-1]}) are in "
            "use by running sandboxes; retry when some have ended, or raise "
            "EXECBOX_SANDBOX_UID_COUNT"
        )

    @staticmethod
    def _lock_claim(uid: int) -> int | None:
        """The fd of uid's claim file, locked by us; None when another process holds it."""
        path = CLAIMS_DIR / str(uid)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder gave it back (removed it) meanwhile: try afresh

    def give_back(self, uid: int) -> None:
        """Ends the claim on ``uid`` (the caller holds ``lock``)."""
        fd = self._claims.pop(uid)
        (CLAIMS_DIR / str(uid)).unlink()
        os.close(fd)
