"""Each sandbox's own pseudo-terminals, at most MAX_PTYS of them.

The kernel keeps one count of ptys for every devpts instance but the host's own
(kernel.pty.max minus kernel.pty.reserve: 3072 by default), and the instance bwrap
mounts at /dev/pts has no cap of its own: one program could open them all and leave
no pty to any other sandbox. So the host mounts a devpts instance with ``max=`` for
each sandbox, and bwrap binds it over its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path

from execbox.engine.errors import SandboxError

MAX_PTYS = 32
MS_NOSUID = 0x2
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
OPTIONS = f"newinstance,ptmxmode=0666,mode=0620,max={MAX_PTYS}"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def mount_ptys(path: Path) -> None:
    """A new devpts instance at ``path`` (created), for one sandbox."""
    path.mkdir(mode=0o755)
    flags = MS_NOSUID | MS_NOEXEC
    if _libc.mount(b"devpts", os.fsencode(path), b"devpts", flags, OPTIONS.encode()) != 0:
        err = ctypes.get_errno()
        path.rmdir()
        raise SandboxError(f"cannot mount a devpts instance at {path}: {os.strerror(err)}")


def unmount_ptys(path: Path) -> None:
    """Frees the instance (its ptys die with the processes that hold them)."""
    _libc.umount2(os.fsencode(path), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()
