"""A sandbox's private workspace, and the host's only way to touch files in it.

The workspace is a size- and inode-capped tmpfs owned by the sandbox uid; beside it,
a second one, capped alike, holds the sandbox's /tmp and /dev/shm (bwrap's own
--tmpfs takes no inode cap, and files there cost the host as much). Everything the
host does inside it goes through directory file descriptors, one path component
at a time, with O_NOFOLLOW: a symlink, FIFO or device planted by the program is
never followed or opened (Judge0's CVE-2024-28185/28189 were the host following
such links).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import heapq
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from execbox.engine.errors import SandboxError
from execbox.engine.uids import UidLease

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MNT_DETACH = 0x2
MAX_PATH_DEPTH = 64
NAME_MAX = 255  # bytes in one path component (Linux)
PATH_MAX = 4096  # bytes in a whole path, its terminating NUL included (Linux)
WORKSPACE_MODE = 0o700
# Inodes a workspace may hold per MiB of its size (an average of 4 KiB a file), and at
# least: without a cap, millions of empty files cost the host kernel memory and make
# every listing and reset of the workspace slow.
INODES_PER_MB = 256
MIN_INODES = 4096
# The private directories of a sandbox besides /box: where each lives in the scratch
# tmpfs, beside the workspace's (the mount's name plus SCRATCH_SUFFIX).
PRIVATE_DIRS = {"/tmp": "tmp", "/dev/shm": "shm"}
SCRATCH_SUFFIX = ".scratch"
PRIVATE_DIR_MODE = 0o755
# The inode flags ioctls (chattr); the kernel reads and writes an int.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspacePathError(ValueError):
    """A path that would leave the workspace, or that names something unsafe."""


class WorkspaceNameTooLong(WorkspacePathError):
    """A path, or one of its components, longer than the kernel accepts."""


def _mount_tmpfs(target: Path, options: str, flags: int = 0) -> None:
    res = _libc.mount(
        b"tmpfs", os.fsencode(target), b"tmpfs", MS_NOSUID | MS_NODEV | flags, options.encode()
    )
    if res != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"cannot mount the workspace tmpfs at {target}: {os.strerror(err)}")


def split_path(path: str) -> list[str]:
    """The components of a workspace-relative path; refuses anything that escapes."""
    if "\0" in path:
        raise WorkspacePathError("path contains a NUL byte")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if path.startswith("/") and not path.startswith("/box/") and path != "/box":
        raise WorkspacePathError(f"{path!r}: absolute paths must be inside /box")
    if path.startswith("/box"):
        parts = parts[1:]
    if any(p == ".." for p in parts):
        raise WorkspacePathError(f"{path!r}: '..' is not allowed")
    if len(parts) > MAX_PATH_DEPTH:
        raise WorkspacePathError(f"{path!r}: too deep")
    # Bytes, not characters: the kernel counts a name's encoded length.
    if any(len(os.fsencode(p)) > NAME_MAX for p in parts):
        raise WorkspaceNameTooLong(f"a path component is longer than {NAME_MAX} bytes")
    if len(os.fsencode("/".join(parts))) >= PATH_MAX:
        raise WorkspaceNameTooLong(f"the path is longer than {PATH_MAX - 1} bytes")
    return parts


@dataclass(frozen=True)
class Entry:
    name: str
    type: str  # file | dir | symlink | other
    size: int
    mtime: float


class Workspace:
    """A mounted workspace directory on the host."""

    def __init__(
        self, path: Path, uid: int, gid: int, size_mb: int, lease: UidLease | None = None
    ) -> None:
        self.path = path
        self.scratch = path.with_name(path.name + SCRATCH_SUFFIX)
        self.uid = uid
        self.gid = gid
        self.size_mb = size_mb
        self.lease = lease  # the claim on uid, given back by destroy()

    @classmethod
    def create(cls, path: Path, lease: UidLease, size_mb: int) -> Workspace:
        """A new workspace owned by the lease's uid (the lease is the workspace's now),
        with its scratch tmpfs beside it (the sandbox's /tmp and /dev/shm)."""
        workspace = cls(path, lease.uid, lease.gid, size_mb, lease)
        try:
            for mount in (workspace.path, workspace.scratch):
                mount.mkdir(mode=0o700)
                _mount_tmpfs(mount, cls._options(lease.uid, lease.gid, size_mb))
            for name in PRIVATE_DIRS.values():
                (workspace.scratch / name).mkdir(mode=PRIVATE_DIR_MODE)
                os.chown(workspace.scratch / name, lease.uid, lease.gid)
        except BaseException:
            workspace.destroy()
            raise
        return workspace

    @staticmethod
    def _options(uid: int, gid: int, size_mb: int) -> str:
        inodes = max(MIN_INODES, size_mb * INODES_PER_MB)
        return f"size={size_mb}m,nr_inodes={inodes},mode={WORKSPACE_MODE:o},uid={uid},gid={gid}"

    def resize(self, size_mb: int) -> None:
        if size_mb != self.size_mb:
            for mount in (self.path, self.scratch):
                _mount_tmpfs(mount, self._options(self.uid, self.gid, size_mb), MS_REMOUNT)
            self.size_mb = size_mb

    def clear(self) -> None:
        """Makes the workspace as new (between two uses of it)."""
        with self._dir([]) as fd:
            restore_dir(fd, WORKSPACE_MODE)

    def destroy(self) -> None:
        """Unmounts the workspace and its scratch and lets go of its uid (call once
        nothing runs in it)."""
        for mount in (self.path, self.scratch):
            _libc.umount2(os.fsencode(mount), MNT_DETACH)
            with contextlib.suppress(FileNotFoundError):
                mount.rmdir()
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    # -- confined access -------------------------------------------------

    @contextlib.contextmanager
    def _dir(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the directory at ``parts``, reached without following links."""
        fd = os.open(self.path, DIR_FLAGS)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                        os.chown(part, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)
                try:
                    nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                except (NotADirectoryError, OSError) as exc:
                    raise WorkspacePathError(f"{part!r} is not a directory") from exc
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _open_regular(self, path: str, flags: int, mode: int = 0o644) -> int:
        parts = split_path(path)
        if not parts:
            raise WorkspacePathError("a file path is required")
        *dirs, name = parts
        with self._dir(dirs, create=bool(flags & os.O_CREAT)) as dfd:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode,
                             dir_fd=dfd)  # fmt: skip
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
                    raise WorkspacePathError(f"{path!r} is not a regular file") from exc
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise WorkspacePathError(f"{path!r} is not a regular file")
        return fd

    def open_file(self, path: str, *, write: bool) -> int:
        """A blocking descriptor of a regular file, for streaming it (the caller closes
        it): created or truncated, and owned by the sandbox uid, when ``write``."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if write else os.O_RDONLY
        fd = self._open_regular(path, flags)
        try:
            if write:
                os.fchown(fd, self.uid, self.gid)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        fd = self._open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchown(fd, self.uid, self.gid)
            os.set_blocking(fd, True)
            write_all(fd, data)
        except OSError as exc:
            raise SandboxError(f"cannot write {path!r} in the workspace: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def read_file(self, path: str, max_bytes: int) -> bytes:
        fd = self._open_regular(path, os.O_RDONLY)
        try:
            os.set_blocking(fd, True)
            chunks, left = [], max_bytes + 1
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise WorkspacePathError(f"{path!r} is larger than {max_bytes} bytes")
        return data

    def remove(self, path: str) -> None:
        parts = split_path(path)
        if not parts:
            raise WorkspacePathError("refusing to remove the workspace itself")
        *dirs, name = parts
        with self._dir(dirs) as dfd:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
                try:
                    empty_dir(fd)
                finally:
                    os.close(fd)
                os.rmdir(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)

    def list_dir(
        self, path: str = "", *, after: bytes = b"", limit: int | None = None
    ) -> list[Entry]:
        """The entries of a directory in the byte order of their names: all of them, or
        the first ``limit`` whose names sort after ``after``. Only the entries returned
        are stat()ed, and at most ``limit`` of them are held, however big the directory."""
        with self._dir(split_path(path)) as dfd, os.scandir(dfd) as scan:
            wanted = (entry for entry in scan if _name_bytes(entry) > after)
            picked = (
                sorted(wanted, key=_name_bytes)
                if limit is None
                else heapq.nsmallest(limit, wanted, key=_name_bytes)
            )
            entries = []
            for entry in picked:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # the program removed it meanwhile
                    continue
                kind = (
                    "dir" if stat.S_ISDIR(st.st_mode)
                    else "file" if stat.S_ISREG(st.st_mode)
                    else "symlink" if stat.S_ISLNK(st.st_mode)
                    else "other"
                )  # fmt: skip
                entries.append(Entry(entry.name, kind, st.st_size, st.st_mtime))
        return entries


def _name_bytes(entry: os.DirEntry[str]) -> bytes:
    return os.fsencode(entry.name)


def write_all(fd: int, data: bytes) -> None:
    """Writes all of ``data`` to a blocking ``fd`` (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def restore_dir(fd: int, mode: int) -> None:
    """Empties the directory open at ``fd`` and gives it back ``mode``, no extended
    attributes, no inode flags and fresh timestamps: its owner (a program) may have
    changed them, as a note to the next."""
    empty_dir(fd)
    for name in os.listxattr(fd):
        os.removexattr(fd, name)
    _clear_inode_flags(fd)
    os.fchmod(fd, mode)
    os.utime(fd)


def _clear_inode_flags(fd: int) -> None:
    """Clears the inode flags an owner may set (chattr +d, +A, ...; tmpfs has them since
    Linux 6.0, where older kernels answer ENOTTY)."""
    flags = array.array("i", [0])
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
    except OSError as exc:
        if exc.errno != errno.ENOTTY:
            raise
        return
    if flags[0]:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, array.array("i", [0]))


def empty_dir(fd: int) -> None:
    """Removes everything in the directory open at ``fd``, following no link.

    Iterative, whatever the depth of the tree (a program may nest directories far
    deeper than Python may recurse, or than a process may hold descriptors): one
    directory is open at a time, left for a subdirectory and come back to through
    "..", which must then be the very directory left (a program moving directories
    meanwhile makes the removal fail with WorkspacePathError, never reach outside
    the tree).
    """
    cur = os.dup(fd)
    try:
        levels = [_Level("", os.fstat(cur), _unlink_files(cur))]
        while levels:
            level = levels[-1]
            if level.subdirs:
                name = level.subdirs.pop()
                child = os.open(name, DIR_FLAGS, dir_fd=cur)
                os.close(cur)
                cur = child
                levels.append(_Level(name, os.fstat(cur), _unlink_files(cur)))
                continue
            levels.pop()
            if levels:
                parent = os.open("..", DIR_FLAGS, dir_fd=cur)
                os.close(cur)
                cur = parent
                here = os.fstat(cur)
                expected = levels[-1].stat
                if (here.st_dev, here.st_ino) != (expected.st_dev, expected.st_ino):
                    raise WorkspacePathError(
                        "a directory moved while its tree was being removed: try again"
                    )
                os.rmdir(level.name, dir_fd=cur)
    finally:
        os.close(cur)


@dataclass
class _Level:
    """A directory of the tree being removed: its name in its parent, its identity,
    and the subdirectories still to remove in it."""

    name: str
    stat: os.stat_result
    subdirs: list[str]


def _unlink_files(fd: int) -> list[str]:
    """Removes what is not a directory in the directory open at ``fd``; its subdirectories."""
    subdirs = []
    for entry in os.scandir(fd):
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry.name)
        else:
            os.unlink(entry.name, dir_fd=fd)
    return subdirs
