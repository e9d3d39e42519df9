"""Socket families the network namespace does not confine: AF_VSOCK is shared with
the host and reaches the hypervisor; AF_PACKET, AF_ALG and the rest are attack
surface no program needs. Only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK may be
created, by socket() or socketpair(), whatever the upper bits of the argument."""

from __future__ import annotations

import errno

from execbox.models import Verdict
from execbox.runner import Runner
from kit.host import HostGuard
from kit.results import describe, execute, stdout

SOCKETS_C = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void try_family(const char *name, long family, int type) {
    int pair[2];
    errno = 0;
    long fd = syscall(SYS_socket, family, type, 0);
    int socket_errno = fd < 0 ? errno : 0;
    errno = 0;
    long rc = syscall(SYS_socketpair, family, type, 0, pair);
    printf("%s %d %d\n", name, socket_errno, rc < 0 ? errno : 0);
}

int main(void) {
    try_family("unix", AF_UNIX, SOCK_STREAM);
    try_family("inet", AF_INET, SOCK_DGRAM);
    try_family("inet6", AF_INET6, SOCK_DGRAM);
    try_family("netlink", AF_NETLINK, SOCK_RAW);
    try_family("vsock", AF_VSOCK, SOCK_STREAM);
    try_family("vsock_high_bits", (1L << 32) | AF_VSOCK, SOCK_STREAM);
    try_family("packet", AF_PACKET, SOCK_RAW);
    try_family("alg", AF_ALG, SOCK_SEQPACKET);
    try_family("bluetooth", AF_BLUETOOTH, SOCK_STREAM);
    try_family("can", AF_CAN, SOCK_RAW);
    try_family("tipc", AF_TIPC, SOCK_RDM);
    try_family("xdp", AF_XDP, SOCK_RAW);
    try_family("kcm", AF_KCM, SOCK_DGRAM);
    try_family("rds", AF_RDS, SOCK_SEQPACKET);
    try_family("unspec", AF_UNSPEC, SOCK_STREAM);
    try_family("beyond", 1000, SOCK_STREAM);
    return 0;
}
"""

DENIED = (
    "vsock", "vsock_high_bits", "packet", "alg", "bluetooth", "can", "tipc", "xdp", "kcm",
    "rds", "unspec", "beyond",
)  # fmt: skip


async def test_only_the_needed_socket_families_can_be_created(
    runner: Runner, host: HostGuard
) -> None:
    result = await execute(runner, "c", SOCKETS_C)
    assert result.verdict == Verdict.OK, describe(result)
    got = {name: (int(a), int(b)) for name, a, b in map(str.split, stdout(result).splitlines())}
    # socketpair() exists for AF_UNIX only: the kernel refuses it for the others.
    assert got["unix"] == (0, 0), got
    for name in ("inet", "inet6", "netlink"):
        assert got[name][0] == 0, (name, got)
    for name in DENIED:
        assert got[name] == (errno.EAFNOSUPPORT, errno.EAFNOSUPPORT), (name, got)
    await host.check()


AIO_C = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    unsigned long ctx = 0;
    long rc = syscall(SYS_io_setup, 65536, &ctx);
    printf("%ld %d\n", rc, rc < 0 ? errno : 0);
    return 0;
}
"""


async def test_kernel_aio_contexts_counted_host_wide_cannot_be_taken(
    runner: Runner, host: HostGuard
) -> None:
    """fs.aio-max-nr is one pool for the whole host: all of it in one io_setup()."""
    result = await execute(runner, "c", AIO_C)
    assert stdout(result) == f"-1 {errno.ENOSYS}\n", describe(result)
    await host.check()
