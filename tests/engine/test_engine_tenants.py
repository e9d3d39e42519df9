"""Two tenants at once (issue 19, item 5): the kernel counts several limits per host
user (inotify instances, queued signals, pipe buffer pages, epoll watches), so a
program that uses them all up must not take them from a program in another sandbox:
every sandbox runs as a host uid of its own (execbox.engine.uids). Some counts are
host-wide (AIO contexts, ptys): those are denied (seccomp) or capped per sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import resource
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from execbox.engine import SandboxError
from execbox.engine.ptys import MAX_PTYS
from execbox.engine.uids import CLAIMS_DIR, UidPool
from execbox.models import ExecutionRequest, Verdict
from execbox.runner import Runner, RunnerEvent
from kit.host import PER_USER_HOG, PER_USER_PROBE, PER_USER_PROBE_OK, HostGuard, claim_uids
from kit.results import describe, json_lines, stdout

LIMITS = {"cpu_time_s": 10, "wall_time_s": 30, "memory_mb": 256, "processes": 16}
HOLD_LIMIT_S = 30  # a guard against a hang, not a measurement
# Queued signals are kernel memory (~100 bytes each): a host whose limit is higher than
# this is not worth filling in a test.
MAX_SIGPENDING = 200_000
INOTIFY_INSTANCES = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
LIBC = ctypes.CDLL(None, use_errno=True)
IO_SETUP, IO_DESTROY = 206, 207  # x86-64


@contextlib.asynccontextmanager
async def holding(runner: Runner, code: str) -> AsyncIterator[dict[str, Any]]:
    """Runs a program that prints one JSON line and then waits for its stdin to close;
    yields that line's value while it waits, and lets it end after the block."""
    output = bytearray()
    said = asyncio.Event()
    release = asyncio.Event()

    def on_event(event: RunnerEvent) -> None:
        if event.kind == "stdout":
            output.extend(event.data)
            if b"\n" in output:
                said.set()

    async def held_stdin() -> AsyncIterator[bytes]:
        await release.wait()
        return
        yield b""  # an async generator that ends (closes stdin) once released

    hog = asyncio.create_task(
        runner.execute(
            ExecutionRequest(language="python", code=code, limits=LIMITS),
            on_event=on_event,
            stdin=held_stdin(),
        )
    )
    try:
        saying = asyncio.create_task(said.wait())
        await asyncio.wait({hog, saying}, timeout=HOLD_LIMIT_S, return_when="FIRST_COMPLETED")
        saying.cancel()
        assert said.is_set(), describe(await hog) if hog.done() else "the program said nothing"
        yield json.loads(output.splitlines()[0])
    finally:
        release.set()
        result = await asyncio.wait_for(hog, HOLD_LIMIT_S)
    assert result.verdict == Verdict.OK and stdout(result).endswith("released\n"), describe(result)


async def test_a_tenant_that_exhausts_per_user_limits_leaves_another_its_own(
    runner: Runner, host: HostGuard
) -> None:
    sigpending = resource.getrlimit(resource.RLIMIT_SIGPENDING)[0]
    if not 0 < sigpending <= MAX_SIGPENDING:
        pytest.skip(f"RLIMIT_SIGPENDING is {sigpending}: too many signals to queue in a test")
    async with holding(runner, PER_USER_HOG) as used:
        # It did use up its own share of each: the probe's would be gone if they were shared.
        assert used["inotify_errno"] == errno.EMFILE and used["inotify"] == INOTIFY_INSTANCES, used
        assert used["pipe_errno"] == errno.EPERM and used["new_pipe_size"] == 8192, used
        assert used["sigqueue_errno"] == errno.EAGAIN and used["queued"] >= sigpending - 16, used

        probe = await runner.execute(
            ExecutionRequest(language="python", code=PER_USER_PROBE, limits=LIMITS)
        )
        assert probe.verdict == Verdict.OK, describe(probe)
        assert json_lines(stdout(probe)) == PER_USER_PROBE_OK
    await host.check()


# Asks for every kernel AIO event of the host (fs.aio-max-nr counts them host-wide).
AIO_HOG = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
wanted = int(open("/proc/sys/fs/aio-max-nr").read())
context = ctypes.c_ulong(0)
got = libc.syscall(206, wanted, ctypes.byref(context))  # io_setup, x86-64
print(json.dumps({"io_setup": got, "errno": ctypes.get_errno()}), flush=True)
sys.stdin.read()
print("released")
"""


def host_io_setup() -> int:
    """io_setup(1) in this (the server's) process: 0, or the errno it failed with."""
    context = ctypes.c_ulong(0)
    if LIBC.syscall(IO_SETUP, 1, ctypes.byref(context)) != 0:
        return ctypes.get_errno()
    LIBC.syscall(IO_DESTROY, context)
    return 0


async def test_a_program_cannot_take_the_hosts_aio_contexts(
    runner: Runner, host: HostGuard
) -> None:
    async with holding(runner, AIO_HOG) as tried:
        assert host_io_setup() == 0  # the rest of the host still has them
        assert tried == {"io_setup": -1, "errno": errno.ENOSYS}
    await host.check()


def test_a_uid_left_claimed_by_a_dead_process_is_taken_only_when_nothing_runs_as_it() -> None:
    """A claim file left behind (its process died holding it) while a process still runs
    as the uid: that uid is skipped (and the file kept); once nothing runs as it, it is
    taken again, or swept by the next process that starts."""
    uids = claim_uids()
    first = uids.uids.start
    leftover = CLAIMS_DIR / str(first)
    CLAIMS_DIR.mkdir(mode=0o700, exist_ok=True)
    leftover.write_text("4194304\n")  # the pid of a process gone
    survivor = subprocess.Popen(["/bin/sleep", "60"], user=first, group=first)
    try:
        pool = UidPool(first, first, 2)
        assert leftover.exists()
        taken = pool.acquire()
        assert taken.uid == first + 1  # not the one a process still runs as
        with pytest.raises(SandboxError, match="all 2 sandbox uids"):
            pool.acquire()  # and never shared
        survivor.kill()
        survivor.wait()
        again = pool.acquire()
        assert again.uid == first
        again.release()
        taken.release()
        assert not leftover.exists() and not (CLAIMS_DIR / str(first + 1)).exists()
        # A process that starts sweeps what dead ones left, once nothing runs as it.
        leftover.write_text("4194304\n")
        UidPool(first, first, 2)
        assert not leftover.exists()
    finally:
        survivor.kill()
        survivor.wait()
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
        uids.release()


# Opens ptys from several processes (one may hold 1024 fds), as many as it is given.
PTY_HOG = r"""
import json, os, sys
reports = []
for _ in range(4):
    r, w = os.pipe()
    if os.fork() == 0:
        opened, failed = 0, None
        try:
            while opened < 1000:
                master, slave = os.openpty()
                os.close(slave)
                opened += 1
        except OSError as exc:
            failed = exc.errno
        os.write(w, json.dumps([opened, failed]).encode())
        sys.stdin.read()
        os._exit(0)
    os.close(w)
    reports.append(json.loads(os.read(r, 100)))
errnos = sorted({failed for _, failed in reports if failed})
print(json.dumps({"ptys": sum(opened for opened, _ in reports), "errnos": errnos}), flush=True)
sys.stdin.read()
for _ in reports:
    os.wait()
print("released")
"""
PTY_PROBE = """
import os
master, slave = os.openpty()
print(os.ttyname(slave))
"""


async def test_a_program_cannot_take_every_pty_of_the_host(runner: Runner, host: HostGuard) -> None:
    async with holding(runner, PTY_HOG) as opened:
        probe = await runner.execute(
            ExecutionRequest(language="python", code=PTY_PROBE, limits=LIMITS)
        )
        assert probe.verdict == Verdict.OK, describe(probe)
        assert stdout(probe) == "/dev/pts/0\n"
        assert opened == {"ptys": MAX_PTYS, "errnos": [errno.ENOSPC]}  # its own, all used
    await host.check()
