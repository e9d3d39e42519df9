"""The sandbox as the rest of execbox sees it: workspaces in, results out.

    async with sandbox.workspace(disk_mb=64) as ws:
        ws.write_file("main.py", b"print(1)")
        result = await sandbox.run(ws, Command(["/usr/bin/python3", "main.py"]), limits)

Isolation costs mostly the start of bwrap (namespaces, mounts). A warm pool
keeps a few workspaces with a box already started in them, so the first command
of a workspace only pays for running; later commands of the same workspace (the
run after a compile, each test case) start a box of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterable
from pathlib import Path
from typing import Any

import structlog

from execbox.config import Settings
from execbox.sandbox import cgroups
from execbox.sandbox.box import (
    Box,
    Command,
    OutputCallback,
    SandboxLimits,
    SandboxResult,
    StdinSource,
)
from execbox.sandbox.bwrap import FsView, write_etc
from execbox.sandbox.errors import SandboxError, SandboxUnavailable
from execbox.sandbox.native import init_binary
from execbox.sandbox.seccomp import filter_bpf
from execbox.sandbox.workspace import Workspace

log = structlog.get_logger(__name__)


def _owned_name() -> str:
    """A unique name that says which process owns the thing it names."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def _owner_alive(name: str) -> bool:
    pid, _, _ = name.partition("-")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self.cgroups.setup()
        runtime = settings.runtime_dir
        runtime.mkdir(parents=True, exist_ok=True)
        runtime.chmod(0o711)  # the sandbox uid may pass through, never list or read
        _check_traversable(runtime)
        settings.workspaces_dir.mkdir(exist_ok=True)
        settings.workspaces_dir.chmod(0o711)
        self._sweep_stale_workspaces()
        etc_dir = runtime / "etc"
        write_etc(etc_dir)
        self.view = FsView(
            init_binary=init_binary(settings.bin_dir),
            etc_dir=etc_dir,
            extra_ro_paths=tuple(sorted(set(extra_ro_paths))),
        )
        self.seccomp_file = _write_once(settings.bin_dir / "seccomp.bpf", filter_bpf())
        self.bwrap = settings.bwrap_path
        self._warm: deque[Box] = deque()
        # Workspaces taken from the warm pool, with the box started in them.
        self._prestarted: dict[Path, Box] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    # -- workspaces --------------------------------------------------------

    def _new_workspace(self, disk_mb: int) -> Workspace:
        path = self.settings.workspaces_dir / _owned_name()
        return Workspace.create(path, self.settings.sandbox_uid, self.settings.sandbox_gid, disk_mb)

    def _sweep_stale_workspaces(self) -> None:
        """Unmounts workspaces whose process died without cleaning up (crash, SIGKILL).
        Other live processes (a server and a CLI run) may share the data dir."""
        for path in self.settings.workspaces_dir.iterdir():
            if not _owner_alive(path.name):
                Workspace(path, 0, 0, 0).destroy()
        self.cgroups.sweep(lambda name: not _owner_alive(name))

    @contextlib.asynccontextmanager
    async def workspace(self, disk_mb: int) -> AsyncIterator[Workspace]:
        box = self._take_warm()
        if box is not None:
            workspace = box.workspace
            workspace.resize(disk_mb)
            self._prestarted[workspace.path] = box
        else:
            # mkdir + mount: in a thread, off the event loop that serves every request.
            workspace = await asyncio.to_thread(self._new_workspace, disk_mb)
        try:
            yield workspace
        finally:
            leftover = self._prestarted.pop(workspace.path, None)
            if leftover is not None:
                leftover.kill()
            self._background(self._teardown(leftover, workspace))

    async def _teardown(self, box: Box | None, workspace: Workspace) -> None:
        if box is not None:
            await box.release()
        await asyncio.to_thread(workspace.destroy)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Cleanup that need not delay a result (reaping, rmdir, umount)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanup_done)

    def _cleanup_done(self, task: asyncio.Task[None]) -> None:
        self._cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox_cleanup_failed", exc_info=task.exception())

    # -- boxes ---------------------------------------------------------------

    async def _start_box(self, workspace: Workspace, network: bool = False) -> Box:
        cgroup = self.cgroups.create(_owned_name())
        try:
            return await Box.start(
                init_binary=self.view.init_binary,
                bwrap=self.bwrap,
                uid=self.settings.sandbox_uid,
                gid=self.settings.sandbox_gid,
                view=self.view,
                seccomp_file=self.seccomp_file,
                cgroup=cgroup,
                workspace=workspace,
                network=network,
            )
        except BaseException:
            cgroup.kill()
            self._background(cgroup.remove_async())
            raise

    def _take_warm(self) -> Box | None:
        box = self._warm.popleft() if self._warm else None
        self._refill()
        return box

    def _refill(self) -> None:
        if self._closed or self.settings.warm_pool_size == 0:
            return
        if self._filling is None or self._filling.done():
            self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while not self._closed and len(self._warm) < self.settings.warm_pool_size:
            workspace = await asyncio.to_thread(self._new_workspace, 1)
            try:
                self._warm.append(await self._start_box(workspace))
            except asyncio.CancelledError:  # close() while a box was starting
                workspace.destroy()
                raise
            except Exception:
                workspace.destroy()
                log.exception("warm_pool_fill_failed")
                return

    async def warm_up(self) -> None:
        """Fills the warm pool now (servers call this at start)."""
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
        """Runs one command in a fresh box over ``workspace``."""
        if network and not self.settings.allow_network:
            raise SandboxError("network access is disabled on this server (EXECBOX_ALLOW_NETWORK)")
        box = self._prestarted.pop(workspace.path, None)
        if box is not None and box.network != network:
            box.kill()
            self._background(box.release())
            box = None
        if box is None:
            box = await self._start_box(workspace, network)
        try:
            return await box.run(command, limits, stdin=stdin, on_output=on_output)
        finally:
            self._background(box.release())

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filling
        while self._warm:
            box = self._warm.popleft()
            box.kill()
            self._background(self._teardown(box, box.workspace))
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)
