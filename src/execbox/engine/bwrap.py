"""The bubblewrap command line: what a sandboxed process can see and do."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from execbox.engine.workspace import PRIVATE_DIRS

INSIDE_UID = 1000
INSIDE_GID = 1000
WORKDIR = "/box"
INIT_PATH = "/.execbox-init"
# Top-level system directories the toolchains live in (read-only).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The few /etc entries that programs and runtimes read; never the whole /etc.
SYSTEM_ETC = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/ssl/certs",
    "/etc/ca-certificates.conf",
    "/etc/mime.types",
)


@dataclass(frozen=True)
class FsView:
    """The filesystem a sandbox sees, apart from its workspace."""

    init_binary: Path
    etc_dir: Path  # generated passwd, group, hosts
    extra_ro_paths: tuple[str, ...] = field(default_factory=tuple)


def _system_binds(paths: Iterable[str]) -> list[str]:
    args: list[str] = []
    for path in paths:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def write_etc(etc_dir: Path) -> None:
    """Generated identity files: the sandbox user and a loopback-only hosts file."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    etc_dir.chmod(0o755)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"sandbox:x:{INSIDE_UID}:{INSIDE_GID}:sandbox:{WORKDIR}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nsandbox:x:{INSIDE_GID}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost execbox\n::1 localhost\n",
    }
    for name, text in files.items():
        path = etc_dir / name
        if not path.exists() or path.read_text() != text:
            tmp = etc_dir / f".{name}.{os.getpid()}"
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.rename(path)


def bwrap_options(
    bwrap: str,
    view: FsView,
    workspace: Path,
    scratch: Path,
    *,
    network: bool,
    seccomp_fd: int,
    ptys: Path,
) -> list[str]:
    """bwrap and its options, up to the command (execbox-init serving); ``scratch``
    holds the sandbox's /tmp and /dev/shm, ``ptys`` is its own devpts instance (ptys.py)."""
    args = [
        bwrap,
        "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
        "--unshare-cgroup-try",
        "--uid", str(INSIDE_UID), "--gid", str(INSIDE_GID),
        "--hostname", "execbox",
        "--disable-userns",
        "--die-with-parent", "--new-session", "--as-pid-1",
        "--cap-drop", "ALL",
        "--clearenv",
    ]  # fmt: skip
    if not network:
        args.append("--unshare-net")
    args += _system_binds(SYSTEM_DIRS)
    args += _system_binds(p for p in SYSTEM_ETC if os.path.exists(p))
    args += _system_binds(view.extra_ro_paths)
    for name in ("passwd", "group", "hosts"):
        args += ["--ro-bind", str(view.etc_dir / name), f"/etc/{name}"]
    if network:
        args += _system_binds(["/etc/resolv.conf"])
    args += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--dev-bind", str(ptys), "/dev/pts",
        # Writable besides the workspace, in its scratch tmpfs (a reused box empties
        # them between executions, see box.py).
        *(arg for inside, name in PRIVATE_DIRS.items()
          for arg in ("--bind", str(scratch / name), inside)),
        "--bind", str(workspace), WORKDIR,
        "--ro-bind", str(view.init_binary), INIT_PATH,
        "--remount-ro", "/",
        # Only /box, /tmp and /dev/shm are writable: what a box reuse empties.
        "--remount-ro", "/dev",
        "--chdir", WORKDIR,
        "--seccomp", str(seccomp_fd),
    ]  # fmt: skip
    return args
