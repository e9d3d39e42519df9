"""The sandbox as the rest of execbox sees it: workspaces in, results out.

    async with sandbox.workspace(disk_mb=64) as ws:
        ws.write_file("main.py", b"print(1)")
        result = await sandbox.run(ws, Command(["/usr/bin/python3", "main.py"]), limits)

Isolation costs mostly the start of bwrap (namespaces, mounts) and its teardown. So
a workspace comes with a box already started in it (box.py): every command of the
workspace (the compile, the run, each test) runs in that box, and when the
workspace is done the box is reset and kept for the next one. A pool keeps
``warm_pool_size`` boxes ready (idle plus in use), so requests rarely start one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterable
from pathlib import Path
from typing import Any

import structlog

from execbox.config import Settings
from execbox.engine import cgroups
from execbox.engine.box import Box
from execbox.engine.bwrap import FsView, write_etc
from execbox.engine.command import (
    Command,
    OutputCallback,
    SandboxLimits,
    SandboxResult,
    StdinSource,
)
from execbox.engine.errors import SandboxError, SandboxUnavailable
from execbox.engine.names import owned_name, owner_alive
from execbox.engine.native import init_binary
from execbox.engine.ptys import unmount_ptys
from execbox.engine.seccomp import filter_bpf
from execbox.engine.uids import UidPool
from execbox.engine.workspace import Workspace

log = structlog.get_logger(__name__)


def _check_traversable(path: Path) -> None:
    """bwrap runs as the sandbox uid: it must be able to reach what it binds."""
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & 0o001:
            raise SandboxUnavailable(
                f"the sandbox uid cannot reach {path}: {parent} is not searchable by others; "
                f"`chmod o+x {parent}` or set EXECBOX_RUNTIME_DIR elsewhere (default /run/execbox)"
            )


def _write_once(path: Path, data: bytes) -> Path:
    """Writes a shared file atomically, so concurrent processes never see half of it."""
    if not path.exists() or path.read_bytes() != data:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        tmp.rename(path)
    return path


def _check_host(settings: Settings) -> None:
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "execbox's sandbox needs root (it creates cgroups and mounts workspaces, then "
            "drops to an unprivileged uid for the program): run it as root or in a container"
        )
    if not Path(settings.bwrap_path).exists() and not shutil.which("bwrap"):
        raise SandboxUnavailable(
            f"bubblewrap not found at {settings.bwrap_path}: install it with "
            "`apt-get install bubblewrap` (or set EXECBOX_BWRAP_PATH)"
        )
    max_userns = Path("/proc/sys/user/max_user_namespaces")
    if max_userns.exists() and max_userns.read_text().strip() == "0":
        raise SandboxUnavailable(
            "user namespaces are disabled (user.max_user_namespaces = 0): enable them with "
            "`sysctl -w user.max_user_namespaces=10000`"
        )
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists() and clone.read_text().strip() == "0":
        raise SandboxUnavailable(
            "unprivileged user namespaces are disabled: enable them with "
            "`sysctl -w kernel.unprivileged_userns_clone=1`"
        )


class Sandbox:
    """Runs commands isolated, in workspaces it creates and destroys."""

    def __init__(self, settings: Settings, extra_ro_paths: Iterable[str] = ()) -> None:
        self.settings = settings
        _check_host(settings)
        self.cgroups = cgroups.detect(
            settings.cgroup_version, settings.cgroup_mount, settings.cgroup_name
        )
        self.cgroups.setup(settings.sandbox_cpu_weight)
        runtime = settings.runtime_dir
        runtime.mkdir(parents=True, exist_ok=True)
        runtime.chmod(0o711)  # the sandbox uid may pass through, never list or read
        _check_traversable(runtime)
        for private in (settings.workspaces_dir, settings.ptys_dir):
            private.mkdir(exist_ok=True)
            private.chmod(0o711)
        self._sweep_stale_workspaces()
        etc_dir = runtime / "etc"
        write_etc(etc_dir)
        self.view = FsView(
            init_binary=init_binary(settings.bin_dir),
            etc_dir=etc_dir,
            extra_ro_paths=tuple(sorted(set(extra_ro_paths))),
        )
        self.seccomp_file = _write_once(settings.bin_dir / "seccomp.bpf", filter_bpf())
        self.uids = UidPool(settings.sandbox_uid, settings.sandbox_gid, settings.sandbox_uid_count)
        self.bwrap = settings.bwrap_path
        self._idle: deque[Box] = deque()
        # The box of each workspace in use, and how many boxes are being reset.
        self._boxes: dict[Path, Box] = {}
        self._returning = 0
        self._cleanups: set[asyncio.Task[None]] = set()
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    # -- workspaces --------------------------------------------------------

    def new_workspace(self, disk_mb: int) -> Workspace:
        """A new workspace, owned by a uid no other live sandbox has (see uids.py)."""
        lease = self.uids.acquire()
        try:
            return Workspace.create(self.settings.workspaces_dir / owned_name(), lease, disk_mb)
        except BaseException:
            lease.release()
            raise

    def _sweep_stale_workspaces(self) -> None:
        """Unmounts workspaces and pty instances whose process died without cleaning up
        (crash, SIGKILL). Other live processes (a server and a CLI run) may share the
        data dir."""
        for path in self.settings.workspaces_dir.iterdir():
            if not owner_alive(path.name):
                Workspace(path, 0, 0, 0).destroy()
        for path in self.settings.ptys_dir.iterdir():
            if not owner_alive(path.name):
                unmount_ptys(path)
        self.cgroups.sweep(lambda name: not owner_alive(name))

    @contextlib.asynccontextmanager
    async def workspace(self, disk_mb: int) -> AsyncIterator[Workspace]:
        """A fresh (or freshly emptied) workspace, with a box started over it."""
        box = self._idle.popleft() if self._idle else None
        if box is None:
            box = await self._new_box()
        workspace = box.workspace
        self._boxes[workspace.path] = box
        self._refill()
        try:
            if disk_mb != workspace.size_mb:  # a remount: in a thread, like every mount
                await asyncio.to_thread(workspace.resize, disk_mb)
            yield workspace
        finally:
            self._returning += 1
            self._background(self._recycle(self._boxes.pop(workspace.path)))

    async def _new_box(self) -> Box:
        """A new box (without network) over a new workspace of its own."""
        # mkdir + mount: in a thread, off the event loop that serves every request.
        workspace = await asyncio.to_thread(self.new_workspace, 1)
        try:
            return await Box.start(self, workspace, network=False)
        except BaseException:
            await asyncio.to_thread(workspace.destroy)
            raise

    def _pooled(self) -> int:
        """Boxes of the pool: ready, in use, or being reset to be ready again."""
        return len(self._idle) + len(self._boxes) + self._returning

    async def _recycle(self, box: Box) -> None:
        """Keeps a box whose workspace is done for the next one, or frees it (also when
        its reset fails in any way: a box dropped unfreed would leak its processes,
        mounts and cgroups)."""
        keep = False
        try:
            keep = self._pooled() <= self.settings.warm_pool_size and await box.reset()
        finally:
            self._returning -= 1
            if keep and not self._closed:
                self._idle.append(box)
            else:
                await self._free(box)

    async def _free(self, box: Box) -> None:
        try:
            await box.retire()
        finally:
            await asyncio.to_thread(box.workspace.destroy)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Cleanup that need not delay a result (resets, reaping, rmdir, umount)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanup_done)

    def _cleanup_done(self, task: asyncio.Task[None]) -> None:
        self._cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox_cleanup_failed", exc_info=task.exception())

    def _refill(self) -> None:
        if self._closed or self.settings.warm_pool_size == 0:
            return
        if self._filling is None or self._filling.done():
            self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while not self._closed and self._pooled() < self.settings.warm_pool_size:
            try:
                box = await self._new_box()
            except Exception:
                log.exception("warm_pool_fill_failed")
                return
            self._idle.append(box)

    async def settle(self) -> None:
        """Waits until the resets and frees of boxes whose executions ended are done."""
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups))

    @property
    def idle_boxes(self) -> list[Box]:
        """The boxes ready for the next execution."""
        return list(self._idle)

    async def warm_up(self) -> None:
        """Fills the pool now (servers call this at start)."""
        self._refill()
        if self._filling is not None:
            await self._filling

    async def run(
        self,
        workspace: Workspace,
        command: Command,
        limits: SandboxLimits,
        *,
        stdin: StdinSource = None,
        on_output: OutputCallback | None = None,
        network: bool = False,
    ) -> SandboxResult:
        """Runs one command in the box of ``workspace``."""
        if network and not self.settings.allow_network:
            raise SandboxError("network access is disabled on this server (EXECBOX_ALLOW_NETWORK)")
        box = self._boxes.get(workspace.path)
        if box is not None and box.network == network:
            return await box.run(command, limits, stdin=stdin, on_output=on_output)
        # A box's namespaces are fixed when it starts: a command that needs the other
        # kind, or that runs over a workspace not from workspace() (a persistent
        # sandbox's), gets a box of its own over the same workspace, used once.
        once = await Box.start(self, workspace, network)
        try:
            return await once.run(command, limits, stdin=stdin, on_output=on_output)
        finally:
            self._background(once.retire())

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filling
        while self._idle:
            self._background(self._free(self._idle.popleft()))
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)
