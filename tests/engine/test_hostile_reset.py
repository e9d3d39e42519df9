"""Hostile programs against the reset of a reused box (sandbox/box.py): whatever a
program leaves, the box is either made as new for the next execution or freed whole
(processes, workspace mount, cgroups); never dropped half-alive. Each test runs a
pool of one box, so the next execution provably runs where the last one ran."""

from __future__ import annotations

import json

import pytest

from execbox.engine.workspace import Workspace
from execbox.models import Verdict
from execbox.runner import Runner
from kit.host import HostGuard, resets_done, the_box
from kit.results import describe, execute, stdout

# Far deeper than Python's recursion limit (two frames a level used to be needed).
DEEP_TREE = """
import os
os.chdir({place!r})
for _ in range(3000):
    os.mkdir("d")
    os.chdir("d")
print("deep")
"""

LIST = "import json, os\nprint(json.dumps(sorted(os.listdir({place!r}))))"


@pytest.mark.parametrize("place", ["/tmp", "/box", "/dev/shm"])
async def test_a_deep_tree_is_cleared_and_its_box_reused(
    one_box: Runner, reuse_host: HostGuard, place: str
) -> None:
    box = await the_box(one_box)
    for _ in range(3):  # a leak would show as one more box per request
        made = await execute(one_box, "python", DEEP_TREE.format(place=place))
        assert stdout(made) == "deep\n", describe(made)
        assert await the_box(one_box) is box, "the box was not reset"
    looked = await execute(one_box, "python", LIST.format(place=place))
    assert json.loads(stdout(looked)) == (["main.py"] if place == "/box" else []), describe(looked)
    await reuse_host.check()


async def test_a_box_whose_reset_fails_in_any_way_is_freed(
    one_box: Runner, reuse_host: HostGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = await the_box(one_box)

    def broken(self: Workspace) -> None:
        raise RuntimeError("an unforeseen failure while clearing")

    monkeypatch.setattr(Workspace, "clear", broken)
    ran = await execute(one_box, "python", "print(1)")
    assert ran.verdict == Verdict.OK, describe(ran)
    await resets_done(one_box)
    assert box.session.ended.is_set(), "the box was not killed"
    monkeypatch.undo()
    fresh = await execute(one_box, "python", "print(2)")
    assert stdout(fresh) == "2\n", describe(fresh)
    assert await the_box(one_box) is not box
    await reuse_host.check()


# -- what a reset leaves: nothing a program could read as a note from the last ------

NOTE_IN_TIMES_AND_FLAGS = """
import fcntl, os, struct
FS_IOC_SETFLAGS, NODUMP_NOATIME = 0x40086602, 0x40 | 0x80
for d in ("/box", "/tmp", "/dev/shm"):
    os.utime(d, (123456789, 123456789))
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", NODUMP_NOATIME))
    os.close(fd)
print("noted")
"""

READ_TIMES_AND_FLAGS = """
import array, fcntl, json, os
FS_IOC_GETFLAGS = 0x80086601
found = {}
for d in ("/box", "/tmp", "/dev/shm"):
    flags = array.array("i", [0])
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
    os.close(fd)
    st = os.stat(d)
    found[d] = [int(st.st_atime), int(st.st_mtime), flags[0]]
print(json.dumps(found))
"""


async def test_times_and_inode_flags_of_the_writable_dirs_are_reset(
    one_box: Runner, reuse_host: HostGuard
) -> None:
    box = await the_box(one_box)
    noted = await execute(one_box, "python", NOTE_IN_TIMES_AND_FLAGS)
    assert stdout(noted) == "noted\n", describe(noted)
    assert await the_box(one_box) is box
    read = await execute(one_box, "python", READ_TIMES_AND_FLAGS)
    assert await the_box(one_box) is box
    for place, (atime, mtime, flags) in json.loads(stdout(read)).items():
        assert 123456789 not in (atime, mtime) and flags == 0, (place, stdout(read))
    await reuse_host.check()


# An abstract socket whose only references are in flight in a cycle of SCM_RIGHTS
# messages: its processes are gone, it stays (named) until the kernel collects it.
GHOST_SOCKET = """
import socket
named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
named.bind("\\0execbox-ghost")
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(a, [b"x"], [named.fileno(), a.fileno()])
socket.send_fds(b, [b"x"], [b.fileno()])
print("left")
"""

REACH_GHOST = """
import json, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.sendto(b"hello", "\\0execbox-ghost")
    reached = True
except OSError:
    reached = False
listed = "execbox-ghost" in open("/proc/net/unix").read()
print(json.dumps({"reached": reached, "listed": listed}))
"""

# Notes in the network namespace's counters: loopback traffic, packets with no route.
NETWORK_NOTES = {
    "loopback": 'socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9))',
    "no_route": 'socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("10.9.8.7", 9))',
    "no_route6": (
        'socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"x", ("2001:db8::1", 9))'
    ),
}

READ_NETWORK_COUNTERS = """
import json
lo = [line.split(":")[1].split()[:2] for line in open("/proc/net/dev") if "lo:" in line][0]
names, values = [line.split()[1:] for line in open("/proc/net/snmp") if line.startswith("Ip:")]
ip = dict(zip(names, values))
ip6 = dict(line.split() for line in open("/proc/net/snmp6"))
print(json.dumps([lo, ip["OutRequests"], ip["OutNoRoutes"], ip6["Ip6OutNoRoutes"]]))
"""


async def test_a_unix_socket_left_alive_retires_the_box(
    one_box: Runner, reuse_host: HostGuard
) -> None:
    box = await the_box(one_box)
    left = await execute(one_box, "python", GHOST_SOCKET)
    assert stdout(left) == "left\n", describe(left)
    await resets_done(one_box)
    assert box.session.ended.is_set(), "the box was reused"
    looked = await execute(one_box, "python", REACH_GHOST)
    assert json.loads(stdout(looked)) == {"reached": False, "listed": False}, describe(looked)
    await reuse_host.check()


@pytest.mark.parametrize("note", NETWORK_NOTES)
async def test_moved_network_counters_retire_the_box(
    one_box: Runner, reuse_host: HostGuard, note: str
) -> None:
    box = await the_box(one_box)
    code = f"import socket\nfor _ in range(37):\n    try:\n        {NETWORK_NOTES[note]}\n"
    sent = await execute(one_box, "python", code + "    except OSError:\n        pass\n")
    assert sent.verdict == Verdict.OK, describe(sent)
    await resets_done(one_box)
    assert box.session.ended.is_set(), "the box was reused"
    looked = await execute(one_box, "python", READ_NETWORK_COUNTERS)
    assert json.loads(stdout(looked)) == [["0", "0"], "0", "0", "0"], describe(looked)
    await reuse_host.check()


FILL_WITH_INODES = """
import errno, json, os
made = {}
for place in ("/box", "/tmp", "/dev/shm"):
    made[place] = 0
    try:
        while made[place] < 20_000:
            os.mkdir(f"{place}/{made[place]}")
            made[place] += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
print(json.dumps(made))
"""


async def test_the_writable_dirs_have_an_inode_cap(one_box: Runner, reuse_host: HostGuard) -> None:
    box = await the_box(one_box)
    # 16 MiB of disk: 4096 inodes (Workspace.INODES_PER_MB, MIN_INODES) in /box, and as
    # many in the scratch tmpfs that holds /tmp and /dev/shm.
    filled = await execute(one_box, "python", FILL_WITH_INODES, limits={"disk_mb": 16})
    made = json.loads(stdout(filled))
    assert 4000 < made["/box"] < 4096 and made["/tmp"] + made["/dev/shm"] < 4096, made
    assert await the_box(one_box) is box
    await reuse_host.check()
