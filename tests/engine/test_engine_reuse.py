"""Boxes are reused between executions (sandbox/box.py): nothing of one execution may
reach the next, which may be someone else's. Each test runs a pool of one box, so
the second execution provably runs in the box the first one used."""

from __future__ import annotations

import asyncio
import json

import pytest

from execbox.models import Verdict
from execbox.runner import Runner
from kit.host import HostGuard, the_box
from kit.results import describe, execute, run_stage, stdout

LEAVE_EVERYTHING = r"""
echo left > /box/left.txt; mkdir -p /box/d/e; chmod 000 /box/d
echo left > /tmp/left.txt; echo left > /dev/shm/left.txt
ln -s /etc/passwd /tmp/link
python3 - <<'EOF'
import ctypes, os, socket
# Notes on the directories themselves, which stay: their mode and extended attributes.
for d in ("/box", "/tmp", "/dev/shm"):
    os.setxattr(d, "user.note", b"left")
    os.chmod(d, 0o777)
libc = ctypes.CDLL(None, use_errno=True)
# A System V shared memory segment, semaphore set and message queue, unreadable to others.
assert libc.shmget(0x5EC12E7, 4096, 0o1000 | 0o600) >= 0, os.strerror(ctypes.get_errno())
assert libc.semget(0x5EC12E8, 1, 0o1000 | 0o600) >= 0
assert libc.msgget(0x5EC12E9, 0o1000 | 0o600) >= 0
# A POSIX message queue: denied (it would outlive us in the box's IPC namespace).
rt = ctypes.CDLL("librt.so.1", use_errno=True)
print("mq_open", rt.mq_open(b"/execbox-leak", 0o100 | 0o2, 0o600, None), ctypes.get_errno())
# A daemon in its own session, holding an abstract socket another execution could reach.
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        s = socket.socket(socket.AF_UNIX)
        s.bind("\0execbox-leak")
        s.listen()
        os.close(1); os.close(2)
        while True:
            s.accept()[0].send(b"leaked")
    os._exit(0)
EOF
sleep 0.2
"""

LOOK_FOR_ANYTHING_LEFT = r"""
import json, os, socket
found = {
    "dirs": {d: [oct(os.stat(d).st_mode), os.listxattr(d)] for d in ("/box", "/tmp", "/dev/shm")},
    "box": sorted(os.listdir("/box")),
    "tmp": sorted(os.listdir("/tmp")),
    "shm": sorted(os.listdir("/dev/shm")),
    "sysvipc": [line for t in ("shm", "sem", "msg")
                for line in open(f"/proc/sysvipc/{t}").read().splitlines()[1:]],
    "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "me": os.getpid(),
}
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\0execbox-leak")
    found["abstract_socket"] = s.recv(16).decode()
except OSError:
    found["abstract_socket"] = None
print(json.dumps(found))
"""


async def test_the_next_execution_in_a_box_finds_nothing_of_the_last(
    one_box: Runner, reuse_host: HostGuard
) -> None:
    box = await the_box(one_box)
    left = await execute(one_box, "bash", LEAVE_EVERYTHING, limits={"wall_time_s": 10})
    assert left.verdict == Verdict.OK, describe(left)
    assert stdout(left) == "mq_open -1 1\n", describe(left)  # EPERM
    assert await the_box(one_box) is box and box.uses == 1

    looked = await execute(one_box, "python", LOOK_FOR_ANYTHING_LEFT)
    assert await the_box(one_box) is box and box.uses == 2
    found = json.loads(stdout(looked))
    assert found["box"] == ["main.py"], found
    assert found["dirs"] == {
        "/box": [oct(0o40700), []],
        "/tmp": [oct(0o40755), []],
        "/dev/shm": [oct(0o40755), []],
    }, found
    assert found["tmp"] == found["shm"] == found["sysvipc"] == [], found
    assert found["processes"] == sorted({1, found["me"]}), found  # init and itself
    assert found["abstract_socket"] is None, found
    await reuse_host.check()


async def test_a_reused_box_accounts_each_command_alone(one_box: Runner) -> None:
    hog = "x = bytearray(150 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('ok')"
    first = await execute(one_box, "python", hog, limits={"memory_mb": 256})
    assert stdout(first) == "ok\n", describe(first)
    assert run_stage(first).memory_kb > 150 << 10, describe(first)
    small = await execute(one_box, "python", "print(1)", limits={"memory_mb": 64})
    assert await the_box(one_box) is not None
    # Its own peak and CPU time, not the hog's before it (nor the hog's page cache).
    assert run_stage(small).verdict == Verdict.OK, describe(small)
    assert run_stage(small).memory_kb < 40 << 10, describe(small)
    assert run_stage(small).cpu_time_ms < run_stage(first).cpu_time_ms, describe(small)


async def test_a_killed_command_leaves_its_box_clean_for_the_next(
    one_box: Runner, reuse_host: HostGuard
) -> None:
    box = await the_box(one_box)
    code = "setsid sleep 1000 & nohup sleep 1000 & sleep 1000"
    slow = await execute(one_box, "bash", code, limits={"wall_time_s": 1, "cpu_time_s": 1})
    assert slow.verdict == Verdict.TIME_LIMIT, describe(slow)
    assert await the_box(one_box) is box
    looked = await execute(one_box, "python", LOOK_FOR_ANYTHING_LEFT)
    found = json.loads(stdout(looked))
    assert found["processes"] == sorted({1, found["me"]}), found
    await reuse_host.check()


async def test_a_cancelled_execution_retires_its_box(
    one_box: Runner, reuse_host: HostGuard
) -> None:
    box = await the_box(one_box)
    running = asyncio.create_task(execute(one_box, "bash", "sleep 1000"))
    await asyncio.sleep(0.5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert box.session.ended.is_set()
    ok = await execute(one_box, "bash", "echo fresh")
    assert stdout(ok) == "fresh\n", describe(ok)
    assert await the_box(one_box) is not box
    await reuse_host.check()
