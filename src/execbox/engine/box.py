"""A box: a sandbox started ahead of time and reused, one execution at a time.

Starting a sandbox (bwrap: namespaces, mounts, their teardown) costs several ms of
kernel CPU, more than running a small program. So a box is an exclusive session
(see session.py and init.c) that outlives the execution it served, as go-judge's
container pool does. What could carry anything from one execution to the next is
reset or shut:

- processes: init kills every process of a command when it ends (setsid or not);
- System V IPC: init removes every object with them; POSIX message queues are denied
  by the seccomp filter;
- files: / and /dev are read-only; the host empties /box, /tmp and /dev/shm between
  executions and restores their mode, extended attributes, inode flags and times
  (through directory fds, following no link, however deep the tree);
- the network namespace (which nothing can reset): a box whose execution left a unix
  socket in it, or moved its counters (loopback traffic, packets with no route), is
  not reused;
- accounting and limits: every command runs in a fresh cgroup of its own (on v1, a
  fresh memory cgroup; the other hierarchies' counters are reset), into which the
  box's bwrap and init move before it starts. The first move into a new memory
  cgroup waits for an RCU grace period (1-2 ms), so it is made when the box is reset,
  in a thread, off the next execution's path; only a second command of an execution
  waits for it.

Not reset: counters that only grow, the pid namespace's last pid and the tmpfs inode
and directory-offset numbers, tell an execution how many processes and files earlier
ones in its box made (a narrow channel, bounded by MAX_USES and MAX_AGE_S; closing it
would cost a new box, namespaces and mounts, per execution).

A box that had network, ended, held a process it should not have, or served
MAX_USES executions or MAX_AGE_S is not reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from execbox.engine.command import (
    SANDBOX_OWN_PROCESSES,
    Command,
    OutputCallback,
    SandboxLimits,
    SandboxResult,
    StdinSource,
)
from execbox.engine.errors import SandboxError
from execbox.engine.names import owned_name
from execbox.engine.session import Session
from execbox.engine.workspace import DIR_FLAGS, PRIVATE_DIRS, Workspace, restore_dir

if TYPE_CHECKING:
    from execbox.engine.engine import Sandbox

log = structlog.get_logger(__name__)

# Bounds on what slowly accumulates in a box that is reused (pid numbers, kernel
# objects charged to its namespaces), and on the age of its view of the host.
MAX_USES = 500
MAX_AGE_S = 300.0
# The files of /proc/net whose counters move with any use of the network.
NETWORK_COUNTERS = ("dev", "snmp", "snmp6")


class Box:
    """A started exclusive sandbox bound to a workspace."""

    def __init__(self, sandbox: Sandbox, session: Session) -> None:
        self._sandbox = sandbox
        self.session = session
        # The mode each private directory had when the box started.
        self._modes = {
            inside: stat.S_IMODE(os.stat(self._inside(inside)).st_mode) for inside in PRIVATE_DIRS
        }
        self.uses = 0
        self.started_at = time.monotonic()
        # Whether a command ran in the current cgroup (the next one needs a fresh one).
        self._cgroup_used = False
        # Cgroup directories of earlier commands that could not be removed at once.
        self._stale: list[Path] = []
        self._network_counters = _network_counters(Path(f"/proc/{session.init_pid}/net"))

    @classmethod
    async def start(cls, sandbox: Sandbox, workspace: Workspace, network: bool) -> Box:
        cgroup = sandbox.cgroups.create(owned_name())
        try:
            session = await Session.start(
                sandbox, workspace, cgroup, network=network, exclusive=True
            )
        except BaseException:
            await cgroup.remove_async()
            raise
        return cls(sandbox, session)

    @property
    def workspace(self) -> Workspace:
        return self.session.workspace

    @property
    def network(self) -> bool:
        return self.session.network

    async def run(
        self,
        command: Command,
        limits: SandboxLimits,
        *,
        stdin: StdinSource = None,
        on_output: OutputCallback | None = None,
    ) -> SandboxResult:
        """Runs one command to its end; cancelling kills the box (it is not reused)."""
        if self.session.ended.is_set():
            raise SandboxError("the sandbox has ended")
        try:
            if self._cgroup_used:
                self._fresh_cgroup()
            cgroup = self.session.cgroup
            cgroup.set_limits(
                limits.memory_bytes, limits.processes + SANDBOX_OWN_PROCESSES, limits.cpus
            )
            cgroup.start_accounting()
            self._cgroup_used = True
            proc = await self.session.exec(
                command,
                limits,
                on_output=on_output,
                stdin=b"" if stdin is None else stdin,
                accounting=cgroup,
            )
            return await proc.wait()
        except BaseException:
            self.kill()
            raise

    def _fresh_cgroup(self) -> None:
        """Moves bwrap and init into a renewed cgroup, so that the next command's
        accounting starts from zero and nothing an earlier command used is charged."""
        earlier = self.session.cgroup
        cgroup = self._sandbox.cgroups.renew(earlier, owned_name())
        new = [d for d in cgroup.dirs if d not in earlier.dirs]
        try:
            cgroup.adopt([self.session.proc.pid, self.session.init_pid], new)
        except BaseException:
            self.kill()  # a process may have moved already: the box is not reused
            self._stale += new
            raise
        self.session.cgroup = cgroup
        self._cgroup_used = False
        for d in earlier.dirs:
            if d not in cgroup.dirs:
                try:
                    d.rmdir()  # empty now: its processes moved
                except OSError:
                    self._stale.append(d)

    async def reset(self) -> bool:
        """Makes the box ready for another execution; False when it must not be reused."""
        session = self.session
        reusable = (
            not session.ended.is_set()
            and not session.network
            and not session.busy
            and self.uses < MAX_USES
            and time.monotonic() - self.started_at < MAX_AGE_S
            and set(session.cgroup.pids()) == {session.proc.pid, session.init_pid}
        )
        if not reusable:
            return False
        try:
            renewed = await asyncio.to_thread(self._renew)
        except Exception:
            # Whatever went wrong, the box may hold what it should not: it is freed.
            log.warning("box_reset_failed", exc_info=True)
            return False
        if renewed:
            self.uses += 1
        return renewed

    def _renew(self) -> bool:
        """Empties the box for the next execution; False when it must not be reused."""
        if self._network_used():
            return False
        self._empty()
        return True

    def _network_used(self) -> bool:
        """Whether the execution left a trace in the box's network namespace, which
        cannot be reset: a unix socket (an abstract one that a cycle of SCM_RIGHTS
        keeps alive until the kernel's collector runs, reachable by name) or moved
        counters (loopback traffic, packets with no route). Programs rarely do either."""
        net = Path(f"/proc/{self.session.init_pid}/net")
        with open(net / "unix") as unix:
            if len(unix.readlines()) > 1:  # more than the header
                return True
        return _network_counters(net) != self._network_counters

    def _inside(self, path: str) -> str:
        """The host's path to ``path`` (absolute) in the box's own mount namespace."""
        return f"/proc/{self.session.init_pid}/root{path}"

    def _empty(self) -> None:
        self._fresh_cgroup()
        self.workspace.clear()
        for inside, mode in self._modes.items():
            fd = os.open(self._inside(inside), DIR_FLAGS)
            try:
                restore_dir(fd, mode)
            finally:
                os.close(fd)

    def kill(self) -> None:
        """Kills every process of the box at once (it is not reused after this)."""
        self.session.kill()

    async def retire(self) -> None:
        """Kills the box and frees its cgroups; its workspace is the caller's."""
        await self.session.shutdown()
        for d in self._stale:
            with contextlib.suppress(OSError):
                d.rmdir()
        self._stale.clear()


def _network_counters(net: Path) -> list[str]:
    """A network namespace's counters (from its /proc/net), which only grow: its
    interfaces' traffic and the IP statistics (IPv6's when the host has it)."""
    texts = []
    for name in NETWORK_COUNTERS:
        try:
            texts.append((net / name).read_text())
        except FileNotFoundError:
            texts.append("")
    return texts
