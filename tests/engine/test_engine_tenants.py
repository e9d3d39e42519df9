"""Two tenants at once (issue 19, item 5): the kernel counts several limits per host
user (inotify instances, queued signals, pipe buffer pages, epoll watches), so a
program that uses them all up must not take them from a program in another sandbox.
Every sandbox runs as a host uid of its own (execbox.sandbox.uids)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import subprocess
from collections.abc import AsyncIterator

import pytest
from engine_kit import HostGuard, claim_uids, describe, json_lines, stdout

from execbox.models import ExecutionRequest, Verdict
from execbox.runner import Runner, RunnerEvent
from execbox.sandbox import SandboxError
from execbox.sandbox.uids import CLAIMS_DIR, UidPool

LIMITS = {"cpu_time_s": 10, "wall_time_s": 30, "memory_mb": 256, "processes": 16}
HOLD_LIMIT_S = 30  # a guard against a hang, not a measurement
# Queued signals are kernel memory (~100 bytes each): a host whose limit is higher than
# this is not worth filling in a test.
MAX_SIGPENDING = 200_000

# Uses up what the kernel counts per user, says how far it got, then holds it all until
# its stdin closes.
HOG = r"""
import ctypes, errno, fcntl, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032

inotify = []
while len(inotify) < 1000:
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        inotify_errno = ctypes.get_errno()
        break
    inotify.append(fd)

pipes = []
while len(pipes) < 1000:
    r, w = os.pipe()
    pipes.append((r, w))
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    except OSError as exc:
        pipe_errno = exc.errno
        break
r, w = os.pipe()
shrunk_pipe = fcntl.fcntl(w, F_GETPIPE_SZ)

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
queued = 0
while queued < 1_000_000 and libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(0)) == 0:
    queued += 1
sigqueue_errno = ctypes.get_errno()

print(json.dumps({
    "inotify": len(inotify), "inotify_errno": inotify_errno,
    "big_pipes": len(pipes) - 1, "pipe_errno": pipe_errno, "new_pipe_size": shrunk_pipe,
    "queued": queued, "sigqueue_errno": sigqueue_errno,
}), flush=True)
sys.stdin.read()
print("released")
"""

# What every program expects of a fresh process: each call works.
PROBE = r"""
import ctypes, fcntl, json, os, signal
libc = ctypes.CDLL(None, use_errno=True)
report = {}
fd = libc.inotify_init1(os.O_CLOEXEC)
report["inotify_init1"] = "ok" if fd >= 0 else os.strerror(ctypes.get_errno())
r, w = os.pipe()
report["pipe_size"] = fcntl.fcntl(w, 1032)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
ok = libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(0)) == 0
report["sigqueue"] = "ok" if ok else os.strerror(ctypes.get_errno())
timer = ctypes.c_void_p()
ok = libc.timer_create(1, None, ctypes.byref(timer)) == 0
report["timer_create"] = "ok" if ok else os.strerror(ctypes.get_errno())
print(json.dumps(report))
"""


async def test_a_tenant_that_exhausts_per_user_limits_leaves_another_its_own(
    runner: Runner, host: HostGuard
) -> None:
    sigpending = resource.getrlimit(resource.RLIMIT_SIGPENDING)[0]
    if not 0 < sigpending <= MAX_SIGPENDING:
        pytest.skip(f"RLIMIT_SIGPENDING is {sigpending}: too many signals to queue in a test")
    output = bytearray()
    filled = asyncio.Event()
    release = asyncio.Event()

    def on_event(event: RunnerEvent) -> None:
        if event.kind == "stdout":
            output.extend(event.data)
            if b"\n" in output:
                filled.set()

    async def held_stdin() -> AsyncIterator[bytes]:
        await release.wait()
        return
        yield b""  # an async generator that ends (closes stdin) once released

    hog = asyncio.create_task(
        runner.execute(
            ExecutionRequest(language="python", code=HOG, limits=LIMITS),
            on_event=on_event,
            stdin=held_stdin(),
        )
    )
    try:
        filling = asyncio.create_task(filled.wait())
        await asyncio.wait({hog, filling}, timeout=HOLD_LIMIT_S, return_when="FIRST_COMPLETED")
        filling.cancel()
        assert filled.is_set(), describe(await hog) if hog.done() else "the hog said nothing"
        used = json.loads(output.splitlines()[0])
        # It did use up its own share of each: the probe's would be gone if they were shared.
        assert used["inotify_errno"] == 24 and used["inotify"] <= 128, used  # EMFILE
        assert used["pipe_errno"] == 1 and used["new_pipe_size"] == 8192, used  # EPERM
        assert used["sigqueue_errno"] == 11 and used["queued"] >= sigpending - 16, used  # EAGAIN

        probe = await runner.execute(ExecutionRequest(language="python", code=PROBE, limits=LIMITS))
        assert probe.verdict == Verdict.OK, describe(probe)
        assert json_lines(stdout(probe)) == {
            "inotify_init1": "ok",
            "pipe_size": 65536,
            "sigqueue": "ok",
            "timer_create": "ok",
        }
    finally:
        release.set()
        result = await asyncio.wait_for(hog, HOLD_LIMIT_S)
    assert result.verdict == Verdict.OK and stdout(result).endswith("released\n"), describe(result)
    await host.check()


def test_a_uid_left_claimed_by_a_dead_process_is_taken_only_when_nothing_runs_as_it() -> None:
    """A claim file left behind (its process died holding it) while a process still runs
    as the uid: that uid is skipped; once nothing runs as it, it is taken again."""
    uids = claim_uids()
    first = uids.uids.start
    leftover = CLAIMS_DIR / str(first)
    CLAIMS_DIR.mkdir(mode=0o700, exist_ok=True)
    leftover.write_text("4194304\n")  # the pid of a process gone
    survivor = subprocess.Popen(["/bin/sleep", "60"], user=first, group=first)
    try:
        pool = UidPool(first, first, 2)
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
    finally:
        survivor.kill()
        survivor.wait()
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
        uids.release()
