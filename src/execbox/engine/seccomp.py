"""The seccomp filter every sandboxed process runs under.

Built once with libseccomp (pyseccomp) and exported as BPF for ``bwrap --seccomp``.
Default allow, with a deny list of what programs and compilers never need and
what has been used to break out of containers: kernel-attack surfaces
(io_uring, bpf, userfaultfd, perf), debugging others (ptrace), changing the
filesystem view (mount family), nested user namespaces, keyrings, tty
injection, and every non-native syscall ABI (32-bit int 0x80, x32). Sockets are
the exception to default allow: only the families programs need are allowed, since
others are not confined by the network namespace (AF_VSOCK reaches the hypervisor
and is shared with the host) or are kernel-attack surfaces (AF_PACKET, AF_ALG, ...).
"""

from __future__ import annotations

import errno
import socket
import tempfile
from functools import lru_cache

import pyseccomp as sc

CLONE_NEWUSER = 0x10000000
# The socket families a program may create; every other value of socket()'s and
# socketpair()'s first argument fails with EAFNOSUPPORT.
ALLOWED_SOCKET_FAMILIES = frozenset(
    {socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK}
)
# Above every family Linux has (AF_MAX is 46 in 6.x); what is not below it is
# refused by one comparison.
FAMILY_BOUND = 64
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

DENIED = (
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "kexec_load", "kexec_file_load", "reboot",
    "init_module", "finit_module", "delete_module",
    "keyctl", "add_key", "request_key",
    "bpf", "userfaultfd", "perf_event_open",
    "setns", "acct", "swapon", "swapoff", "syslog", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "personality", "vhangup", "uselib", "nfsservctl",
    "fanotify_init",
    # POSIX message queues outlive their processes in the IPC namespace, which a reused
    # box keeps (box.py); nothing could remove them without mounting mqueue.
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)  # fmt: skip


AIO = ("io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents")


@lru_cache(maxsize=1)
def filter_bpf() -> bytes:
    """The compiled filter, as BPF bytes."""
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    # Only the native ABI is allowed; any other architecture's syscalls are killed.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            f.add_rule(eperm, name)
        except (OSError, ValueError):
            continue  # not a syscall of this architecture
    # Nested user namespaces are how most unprivileged kernel exploits start.
    f.add_rule(eperm, "unshare", sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    # clone3 passes flags in memory a filter cannot read: ENOSYS makes libc use clone.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # Kernel AIO contexts are counted host-wide (fs.aio-max-nr): one program could take
    # them all from every other sandbox and the host. ENOSYS: its users (libaio,
    # databases) fall back to threads, as they do where the kernel has no AIO.
    for name in AIO:
        f.add_rule(sc.ERRNO(errno.ENOSYS), name)
    # libseccomp cannot say "none of these", so each other family is denied by name,
    # and every larger value (high bits included) at once.
    for call in ("socket", "socketpair"):
        denied = sc.ERRNO(errno.EAFNOSUPPORT)
        for family in range(FAMILY_BOUND):
            if family not in ALLOWED_SOCKET_FAMILIES:
                f.add_rule(denied, call, sc.Arg(0, sc.EQ, family))
        f.add_rule(denied, call, sc.Arg(0, sc.GE, FAMILY_BOUND))
    # Typing into the controlling terminal of someone else.
    f.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    f.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCLINUX))
    with tempfile.TemporaryFile() as fh:
        f.export_bpf(fh)
        fh.seek(0)
        return fh.read()
