"""Hostile programs (DESIGN.md §4). Each test asserts the verdict the program earned AND
that the host is unharmed (``host.check()``: no process of the sandbox uid survives, no
cgroup or workspace is left, watched host files and services are as they were)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from execbox.models import ExecutionRequest, ExecutionResult, Verdict
from execbox.runner import Runner, RunnerEvent
from kit.host import HOST_SERVICES, PWNED_NAME, HostGuard, port_answers
from kit.results import describe, execute, json_lines, run_stage, stdout

SMALL = {"cpu_time_s": 1, "wall_time_s": 5, "memory_mb": 64, "processes": 32}


async def test_the_host_guard_sees_a_survivor(runner: Runner, host: HostGuard) -> None:
    """The checks below can fail: a process of the sandbox uid on the host is reported."""
    uid = runner.settings.sandbox_uid
    stray = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        ["/bin/sleep", "60"], user=uid, group=uid, start_new_session=True
    )
    try:
        with pytest.raises(AssertionError, match="survived its run"):
            await host.check(patience_s=0.2)
    finally:
        stray.kill()
        stray.wait()
    await host.check()


# -- processes ----------------------------------------------------------------

FORK_BOMB_C = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    int made = 0;
    for (;;) {
        pid_t pid = fork();
        if (pid == 0) { for (;;) pause(); }
        if (pid < 0) break;
        made++;
    }
    printf("made %d then %s\n", made, strerror(errno));
    fflush(stdout);
    for (;;) fork();
}
"""


async def test_fork_bomb(runner: Runner, host: HostGuard) -> None:
    c_bomb, sh_bomb = await asyncio.gather(
        execute(runner, "c", FORK_BOMB_C, limits={**SMALL, "processes": 16}),
        execute(runner, "bash", ":(){ :|:& };:\nsleep 30\n", limits={**SMALL, "wall_time_s": 2}),
    )
    assert c_bomb.verdict == Verdict.TIME_LIMIT, describe(c_bomb)
    made = stdout(c_bomb).split()
    assert made[0] == "made" and 0 < int(made[1]) < 16, describe(c_bomb)
    assert "Resource temporarily unavailable" in stdout(c_bomb)
    assert sh_bomb.verdict == Verdict.TIME_LIMIT, describe(sh_bomb)
    await host.check()


MEMORY_BOMB_C = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

int main(void) {
    /* Eight processes of 16 MiB each: only a limit on the whole run stops this. */
    for (int i = 0; i < 8; i++) {
        if (fork() == 0) {
            char *p = malloc(16 << 20);
            if (p) memset(p, 1, 16 << 20);
            pause();
        }
    }
    for (;;) {
        char *p = malloc(16 << 20);
        if (!p) return 2;
        memset(p, 1, 16 << 20);
    }
}
"""


async def test_memory_bombs_python_and_c(runner: Runner, host: HostGuard) -> None:
    py_code = "x = []\nwhile True:\n    x.append(bytearray(b'1' * (16 << 20)))\n"
    py, c = await asyncio.gather(
        execute(runner, "python", py_code, limits=SMALL),
        execute(runner, "c", MEMORY_BOMB_C, limits=SMALL),
    )
    for result in (py, c):
        run = run_stage(result)
        assert result.verdict == Verdict.MEMORY_LIMIT, describe(result)
        assert run.memory_kb <= (64 + 1) * 1024, describe(result)
    await host.check()


CPU_THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>

static void *spin(void *arg) { volatile unsigned long n = 0; for (;;) n++; return arg; }

int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, spin, NULL);
    puts("spinning");
    fflush(stdout);
    pthread_join(t[0], NULL);
    return 0;
}
"""


async def test_cpu_loop_and_four_spinning_threads(runner: Runner, host: HostGuard) -> None:
    limits = {**SMALL, "wall_time_s": 10}
    loop, threads = await asyncio.gather(
        execute(runner, "c", "int main(void) { for (;;) {} }\n", limits=limits),
        execute(runner, "c", CPU_THREADS_C, limits=limits),
    )
    for result in (loop, threads):
        run = run_stage(result)
        assert result.verdict == Verdict.TIME_LIMIT, describe(result)
        assert "CPU" in (run.message or ""), describe(result)
        # CPU time of all threads is summed: four threads do not get four seconds. (The
        # slack is the watchdog's polling on a loaded 2-core machine: at most 2 CPU-s/s.)
        assert 1000 <= run.cpu_time_ms <= 2500, describe(result)
    assert stdout(threads) == "spinning\n"
    await host.check()


async def test_sleep_vs_wall_limit(runner: Runner, host: HostGuard) -> None:
    code = "trap '' TERM INT HUP\necho start\nsleep 100\necho never\n"
    result = await execute(runner, "bash", code, limits={**SMALL, "wall_time_s": 1})
    run = run_stage(result)
    assert result.verdict == Verdict.TIME_LIMIT, describe(result)
    assert "wall" in (run.message or "") and run.stdout == "start\n", describe(result)
    await host.check()


async def test_output_flood(runner: Runner, host: HostGuard) -> None:
    both = "import os\nwhile True:\n    os.write(1, b'o' * 65536)\n    os.write(2, b'e' * 65536)\n"
    yes, mixed = await asyncio.gather(
        execute(runner, "bash", "yes flood", limits={**SMALL, "output_kb": 64}),
        execute(runner, "python", both, limits={**SMALL, "output_kb": 256}),
    )
    y = run_stage(yes)
    assert yes.verdict == Verdict.OUTPUT_LIMIT, describe(yes)
    assert y.stdout_truncated and len(y.stdout) == 64 * 1024
    assert set(y.stdout.splitlines()[:-1]) == {"flood"}
    m = run_stage(mixed)
    assert mixed.verdict == Verdict.OUTPUT_LIMIT, describe(mixed)
    assert len(m.stdout) <= 256 * 1024 and len(m.stderr) <= 256 * 1024
    assert m.stdout_truncated or m.stderr_truncated
    await host.check()


DAEMON = r"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        signal_free = time.time() + 60
        while time.time() < signal_free:
            time.sleep(0.05)
            with open("/tmp/alive", "w") as fh:
                fh.write(str(time.time()))
        os._exit(0)
    os._exit(0)
os.wait()
print("parent done")
"""


async def test_daemonized_orphan_does_not_survive(runner: Runner, host: HostGuard) -> None:
    result = await execute(runner, "python", DAEMON, limits=SMALL)
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result) == "parent done\n"
    await host.check()  # the setsid grandchild was killed with the run


DAEMON_HOLDING_STDOUT = r"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:  # keeps the output pipe open and busy after the program "ended"
            print("daemon", flush=True)
            time.sleep(0.01)
    os._exit(0)
print("parent exits", flush=True)
"""


async def test_daemon_holding_stdout_neither_hangs_nor_survives(
    runner: Runner, host: HostGuard
) -> None:
    result = await execute(runner, "python", DAEMON_HOLDING_STDOUT, limits=SMALL)
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result).startswith("parent exits\n")
    await host.check()


async def test_stopped_program_and_signals_to_init(runner: Runner, host: HostGuard) -> None:
    stopped, poked = await asyncio.gather(
        execute(
            runner,
            "bash",
            "echo start; kill -STOP $$; echo after",
            limits={**SMALL, "wall_time_s": 1},
        ),
        execute(
            runner,
            "bash",
            "kill -STOP 1; kill -TERM 1; kill -SEGV 1; kill -KILL 1; sleep 0.2; echo alive; exit 4",
            limits=SMALL,
        ),
    )
    assert stopped.verdict == Verdict.TIME_LIMIT, describe(stopped)
    assert stdout(stopped) == "start\n"
    # init (PID 1 of the sandbox) ignores the program's signals: the real status comes back.
    assert poked.verdict == Verdict.RUNTIME_ERROR, describe(poked)
    assert run_stage(poked).exit_code == 4 and stdout(poked) == "alive\n"
    await host.check()


FORGE_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    /* Writes a fake status line into every descriptor it did not get as stdio. */
    const char *fake = "exit 0 1 1 1 1\n";
    printf("[");
    for (int fd = 3; fd < 1024; fd++) {
        if (write(fd, fake, strlen(fake)) > 0) printf(" %d", fd);
    }
    printf(" ]\n");
    return 7;
}
"""


async def test_verdict_cannot_be_forged_nor_host_fds_reached(
    runner: Runner, host: HostGuard
) -> None:
    """A program reaches no descriptor but its stdio: not init's status pipe (so it cannot
    report its own verdict), and not a descriptor the server holds without close-on-exec
    (one inherited from a supervisor, or opened by a C library)."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    os.set_blocking(read_end, False)
    try:
        # The run stage starts a fresh box, after the descriptor exists.
        result = await execute(runner, "c", FORGE_C, limits=SMALL)
        try:
            leaked = os.read(read_end, 4096)
        except BlockingIOError:
            leaked = b""
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.verdict == Verdict.RUNTIME_ERROR, describe(result)
    assert run_stage(result).exit_code == 7
    assert leaked == b"", "a sandboxed program wrote into a pipe of the host process"
    assert stdout(result) == "[ ]\n", "descriptors beyond stdio reached the program"
    await host.check()


async def test_setuid_binaries_and_namespaces_give_nothing(runner: Runner, host: HostGuard) -> None:
    code = (
        "su -c id root </dev/null >/dev/null 2>&1; echo su=$?\n"
        "mkdir -p m; mount -t tmpfs none m >/dev/null 2>&1; echo mount=$?\n"
        "unshare -r true >/dev/null 2>&1; echo unshare=$?\n"
        "nsenter -t 1 -m true >/dev/null 2>&1; echo nsenter=$?\n"
        "id -u\n"
    )
    result = await execute(runner, "bash", code, limits=SMALL)
    assert result.verdict == Verdict.OK, describe(result)
    lines = stdout(result).splitlines()
    assert lines[-1] == "1000"
    for line in lines[:-1]:
        assert not line.endswith("=0"), lines
    await host.check()


KILL_ALL = r"""
import os, signal, time
try:
    os.kill(-1, signal.SIGKILL)
    print("kill(-1) sent")
except OSError as exc:
    print("kill(-1) failed", exc.errno)
try:
    os.kill(1, signal.SIGKILL)
except OSError as exc:
    print("kill(1) failed", exc.errno)
time.sleep(0.2)
print("still here")
"""


async def test_kill_minus_one_reaches_nothing_outside(runner: Runner, host: HostGuard) -> None:
    # A host process of the very uid the sandbox runs as, and a concurrent run: neither
    # may be touched by a program that signals everything it can.
    uid = runner.settings.sandbox_uid
    canary = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        ["/bin/sleep", "60"], user=uid, group=uid, start_new_session=True
    )
    try:
        neighbour = asyncio.create_task(
            execute(runner, "bash", "sleep 1.5; echo neighbour alive", limits=SMALL)
        )
        await asyncio.sleep(0.3)
        killer = await execute(runner, "python", KILL_ALL, limits=SMALL)
        assert killer.verdict == Verdict.OK, describe(killer)
        assert "still here" in stdout(killer), describe(killer)
        neighbour_result = await neighbour
        assert neighbour_result.verdict == Verdict.OK, describe(neighbour_result)
        assert stdout(neighbour_result) == "neighbour alive\n"
        assert canary.poll() is None, "kill(-1) in a sandbox killed a host process"
    finally:
        canary.kill()
        canary.wait()
    # The warm pool (idle sandboxes, same uid) survived too and still works.
    after = await execute(runner, "bash", "echo ok")
    assert stdout(after) == "ok\n"
    await host.check()


async def test_cancelling_an_execution_kills_its_sandbox(runner: Runner, host: HostGuard) -> None:
    """The API's cancel: cancelling execute() ends the program at once, leaving nothing."""
    started = asyncio.Event()

    def on_event(event: RunnerEvent) -> None:
        if event.kind == "stdout" and b"started" in event.data:
            started.set()

    code = (
        "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n        break\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    task = asyncio.create_task(
        runner.execute(
            ExecutionRequest(language="python", code=code, limits={**SMALL, "wall_time_s": 30}),
            on_event=on_event,
        )
    )
    await asyncio.wait_for(started.wait(), timeout=20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await host.check()


# -- files and disk -------------------------------------------------------------

FILL = r"""
import errno, json, os, sys
prefix = sys.argv[1]
written, err = 0, None
try:
    for n in range(100_000):  # files of 4 MiB: below the file size limit, the disk fills
        with open(f"{prefix}{n}", "wb") as fh:
            for _ in range(4):
                fh.write(b"\1" * (1 << 20))
                fh.flush()
                written += 1 << 20
except OSError as exc:
    err = errno.errorcode.get(exc.errno, exc.errno)
print(json.dumps({"written": written, "error": err}))
"""


async def test_disk_fill(runner: Runner, host: HostGuard) -> None:
    workspace, tmp, shm = await asyncio.gather(
        execute(
            runner,
            "python",
            FILL,
            args=["big"],
            limits={**SMALL, "memory_mb": 128, "disk_mb": 8},
        ),
        execute(runner, "python", FILL, args=["/tmp/big"], limits=SMALL),
        execute(runner, "python", FILL, args=["/dev/shm/big"], limits=SMALL),
    )
    assert workspace.verdict == Verdict.OK, describe(workspace)
    report = json_lines(stdout(workspace))
    assert report["error"] == "ENOSPC" and report["written"] <= 8 << 20, describe(workspace)
    # /tmp and /dev/shm are memory: the run's memory limit caps them.
    for result in (tmp, shm):
        run = run_stage(result)
        if result.verdict == Verdict.OK:
            report = json_lines(run.stdout)
            assert report["error"] in ("ENOSPC", "ENOMEM"), describe(result)
            assert report["written"] <= 64 << 20, describe(result)
        else:
            assert result.verdict == Verdict.MEMORY_LIMIT, describe(result)
    await host.check()


async def test_file_size_limit(runner: Runner, host: HostGuard) -> None:
    code = "with open('big', 'wb') as fh:\n    fh.write(b'1' * (2 << 20))\n"
    result = await execute(runner, "python", code, limits={**SMALL, "file_size_kb": 1024})
    run = run_stage(result)
    # RLIMIT_FSIZE: SIGXFSZ (Python ignores it: EFBIG) at 1 MiB.
    if result.verdict == Verdict.RUNTIME_ERROR:
        assert "File too large" in run.stderr, describe(result)
    else:
        assert result.verdict == Verdict.OUTPUT_LIMIT and run.signal == signal.SIGXFSZ
    await host.check()


MANY_FILES = r"""
import errno, json, os
made, err = 0, None
try:
    os.mkdir("many")
    for i in range(100_000):
        fd = os.open(f"many/{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x")
        os.close(fd)
        made += 1
except OSError as exc:
    err = errno.errorcode.get(exc.errno, exc.errno)
print(json.dumps({"made": made, "error": err}))
"""


async def test_100k_small_files(runner: Runner, host: HostGuard) -> None:
    result = await execute(
        runner,
        "python",
        MANY_FILES,
        limits={"cpu_time_s": 10, "wall_time_s": 20, "memory_mb": 256, "disk_mb": 512},
    )
    run = run_stage(result)
    assert result.verdict in (Verdict.OK, Verdict.MEMORY_LIMIT), describe(result)
    if result.verdict == Verdict.OK:
        report = json_lines(run.stdout)
        assert report == {"made": 100_000, "error": None} or report["error"] == "ENOSPC"
    await host.check()  # ... and the workspace with all of them is gone


# -- network ----------------------------------------------------------------------

CONNECT = r"""
import json, socket, sys, time
results = {}
for name, host, port in [
    ("internet", "1.1.1.1", 53),
    ("internet6", "2606:4700:4700::1111", 53),
    ("redis", "127.0.0.1", 6379),
    ("postgresql", "127.0.0.1", 5432),
    ("host_ssh", "127.0.0.1", 22),
    ("abstract_unix", "\0" + sys.argv[1], None),
]:
    family = socket.AF_UNIX if port is None else socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(host if port is None else (host, port))
        results[name] = "CONNECTED"
    except OSError as exc:
        results[name] = type(exc).__name__ + ":" + str(exc.errno)
    finally:
        s.close()
results["resolv_conf"] = __import__("os").path.exists("/etc/resolv.conf")
results["interfaces"] = [name for _, name in socket.if_nameindex()]
print(json.dumps(results))
"""


async def test_network_is_unreachable(runner: Runner, host: HostGuard) -> None:
    # The targets exist on the host (otherwise this test would prove nothing).
    for name, port in HOST_SERVICES.items():
        assert port_answers(port), f"host {name} is not listening: cannot test isolation"
    # An abstract unix socket of the host: reachable only from the host's network namespace.
    name = f"execbox-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("\0" + name)
        listener.listen()
        result = await execute(
            runner, "python", CONNECT, args=[name], limits={**SMALL, "wall_time_s": 20}
        )
    assert result.verdict == Verdict.OK, describe(result)
    report = json_lines(stdout(result))
    assert report["abstract_unix"] == f"ConnectionRefusedError:{errno.ECONNREFUSED}", report
    assert report["interfaces"] == ["lo"], report
    for name in ("internet", "internet6", "redis", "postgresql", "host_ssh"):
        assert report[name] != "CONNECTED", report
        # Refused or unreachable at once (no route, nothing listening on the sandbox's lo),
        # never a timeout, which would mean packets left the sandbox.
        assert not report[name].startswith("TimeoutError"), report
    assert report["redis"] == f"ConnectionRefusedError:{errno.ECONNREFUSED}", report
    assert report["postgresql"] == f"ConnectionRefusedError:{errno.ECONNREFUSED}", report
    assert report["resolv_conf"] is False, report  # no resolver configured either
    await host.check()


async def test_network_cannot_be_requested(runner: Runner) -> None:
    from execbox.runner import InvalidRequest

    with pytest.raises(InvalidRequest, match="network"):
        await runner.execute(ExecutionRequest(language="bash", code="echo", network=True))


# -- reading the host ----------------------------------------------------------------

READ_HOST = r"""
import glob, json, os, sys
secret_name = sys.argv[1]
data_dir, runtime_dir = sys.argv[2], sys.argv[3]
report = {}
for path in ["/etc/shadow", "/root", "/home", "/work", "/var", "/var/lib", "/srv", "/opt",
             "/mnt", "/run", "/sys", "/boot", data_dir, runtime_dir, runtime_dir + "/workspaces",
             "/etc/ssh", "/proc/kcore", "/dev/mem", "/dev/sda", "/dev/vda"]:
    try:
        if os.path.isdir(path):
            report[path] = "listed:" + ",".join(sorted(os.listdir(path))[:5])
        else:
            with open(path, "rb") as fh:
                report[path] = "read:" + fh.read(64).hex()
    except OSError as exc:
        report[path] = "error:" + str(exc.errno)
seen = []
if secret_name in os.environ:
    seen.append("environ")
for env_file in glob.glob("/proc/*/environ"):
    try:
        with open(env_file, "rb") as fh:
            if secret_name.encode() in fh.read():
                seen.append(env_file)
    except OSError:
        pass
report["secret_seen"] = seen
report["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
report["uid"] = [os.getuid(), os.geteuid(), os.getgid()]
with open("/proc/self/status") as fh:
    report["cap_eff"] = [l.split()[1] for l in fh if l.startswith("CapEff")][0]
with open("/proc/self/status") as fh:
    report["no_new_privs"] = [l.split()[1] for l in fh if l.startswith("NoNewPrivs")][0]
report["etc"] = sorted(os.listdir("/etc"))
print(json.dumps(report))
"""


async def test_host_files_and_environment_are_invisible(
    runner: Runner, host: HostGuard, host_secret: str
) -> None:
    data_dir = str(runner.settings.data_dir)
    runtime_dir = str(runner.settings.runtime_dir)
    result = await execute(
        runner,
        "python",
        READ_HOST,
        args=["EXECBOX_TEST_SECRET", data_dir, runtime_dir],
        limits=SMALL,
    )
    assert result.verdict == Verdict.OK, describe(result)
    assert host_secret not in result.model_dump_json()
    report = json_lines(stdout(result))
    hidden = [
        "/etc/shadow", "/root", "/home", "/work", "/var", "/var/lib", "/srv", "/opt", "/mnt",
        "/run", "/boot", data_dir, runtime_dir, runtime_dir + "/workspaces", "/etc/ssh",
        "/proc/kcore", "/dev/mem", "/dev/sda", "/dev/vda",
    ]  # fmt: skip
    for path in hidden:
        assert report[path].startswith("error:"), (path, report[path])
    # /sys is not mounted at all (or empty)
    assert report["/sys"] in ("listed:", f"error:{errno.ENOENT}"), report["/sys"]
    assert report["secret_seen"] == [], report["secret_seen"]
    assert report["pids"][0] == 1 and len(report["pids"]) <= 3, report["pids"]  # own pid ns
    assert report["uid"] == [1000, 1000, 1000]
    assert report["cap_eff"] == "0000000000000000"
    assert report["no_new_privs"] == "1"
    assert "shadow" not in report["etc"] and "passwd" in report["etc"]
    await host.check()


async def test_proc_1_environ_and_fds_of_init_are_closed(runner: Runner, host_secret: str) -> None:
    code = r"""
import os
for path in ["/proc/1/environ", "/proc/1/cmdline", "/proc/1/fd", "/proc/1/mem", "/proc/1/root"]:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            print(path, "listed", os.listdir(path))
        else:
            print(path, "read", open(path, "rb").read(200))
    except OSError as exc:
        print(path, "error", exc.errno)
"""
    result = await execute(runner, "python", code, limits=SMALL)
    assert result.verdict == Verdict.OK, describe(result)
    text = stdout(result)
    assert host_secret not in text
    lines = dict(line.split(" ", 1) for line in text.splitlines())
    # init is not dumpable: its fds (the status pipe) and memory are out of reach
    for path in ("/proc/1/fd", "/proc/1/mem", "/proc/1/environ"):
        assert lines[path].startswith("error") or lines[path] == "read b''", (path, text)


# -- writing the host ------------------------------------------------------------------

WRITE_HOST = r"""
import json, os, sys
name = sys.argv[1]
report = {}
for directory in ["/", "/etc", "/usr", "/usr/bin", "/bin", "/sbin", "/lib", "/var/tmp",
                  "/root", "/proc", "/.execbox-init", "/etc/ssl/certs"]:
    path = os.path.join(directory, name)
    try:
        with open(path, "w") as fh:
            fh.write("pwned")
        report[directory] = "WROTE"
    except OSError as exc:
        report[directory] = exc.errno
for path in ["/etc/passwd", "/etc/hosts", "/usr/bin/python3", "/.execbox-init"]:
    try:
        with open(path, "a") as fh:
            fh.write("pwned")
        report[path] = "WROTE"
    except OSError as exc:
        report[path] = exc.errno
try:
    os.chmod("/usr/bin/python3", 0o777)
    report["chmod"] = "DONE"
except OSError as exc:
    report["chmod"] = exc.errno
try:
    with open("/proc/sys/kernel/hostname", "w") as fh:
        fh.write("pwned")
    report["sysctl"] = "WROTE"
except OSError as exc:
    report["sysctl"] = exc.errno
print(json.dumps(report))
"""


async def test_system_paths_are_read_only(runner: Runner, host: HostGuard) -> None:
    result = await execute(runner, "python", WRITE_HOST, args=[PWNED_NAME], limits=SMALL)
    assert result.verdict == Verdict.OK, describe(result)
    report = json_lines(stdout(result))
    assert "WROTE" not in report.values() and "DONE" not in report.values(), report
    await host.check()  # includes: no execbox-pwned file anywhere, watched files unchanged


# -- symlinks and the host's workspace helpers ---------------------------------------

# Every name the host might read or write in a workspace: sources it writes, outputs a
# compiler produces, files an API would fetch. Each becomes a link to a host file.
PLANTED_NAMES = [
    "main.py", "main.c", "main.cpp", "main.go", "main.rs", "main.rb", "main.php", "main.sh",
    "main.js", "main.ts", "Main.java", "Main.class", "main", "a.out", "output.txt", "result.json",
    "stdout", "stderr", "src/main.c",
]  # fmt: skip

PLANT = r"""
import json, os, sys
target, secret_target = sys.argv[1], sys.argv[2]
os.makedirs("src", exist_ok=True)
for name in sys.argv[3:]:
    if os.path.lexists(name):
        os.unlink(name)
    os.symlink(target, name)
os.symlink("/etc", "etcdir")
os.symlink(secret_target, "shadow")
os.mkfifo("fifo")
print(json.dumps(sorted(os.listdir("."))))
"""


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A host file that planted links point at."""
    path = tmp_path / "canary.txt"
    path.write_text("host canary\n")
    return path


async def test_planted_symlinks_are_never_followed_by_the_host(
    runner: Runner, host: HostGuard, canary: Path
) -> None:
    """A program plants links to host files under every name the host might touch; the
    host's workspace helpers refuse them (Judge0 CVE-2024-28185/28189)."""
    from execbox.engine import Command, Outcome, WorkspacePathError
    from execbox.engine.workspace import split_path
    from execbox.models import ResolvedLimits
    from execbox.runner.plan import sandbox_limits

    sandbox = runner.sandbox
    limits = sandbox_limits(
        ResolvedLimits(
            cpu_time_s=2, wall_time_s=10, memory_mb=64, processes=16,
            output_kb=64, file_size_kb=1024, disk_mb=4,
        )
    )  # fmt: skip
    async with sandbox.workspace(4) as ws:
        ws.write_file("plant.py", PLANT.encode())
        result = await sandbox.run(
            ws,
            Command(
                ["/usr/bin/python3", "plant.py", str(canary), "/etc/shadow", *PLANTED_NAMES],
                env={"PATH": "/usr/bin:/bin"},
            ),
            limits,
        )
        assert (result.outcome, result.exit_code) == (Outcome.EXITED, 0), result
        listing = {e.name: e.type for e in ws.list_dir()}
        assert listing["main.py"] == "symlink" and listing["etcdir"] == "symlink"
        assert listing["fifo"] == "other"
        for name in [*PLANTED_NAMES, "shadow", "fifo", "etcdir/passwd", "etcdir/shadow"]:
            with pytest.raises(WorkspacePathError):
                ws.read_file(name, 1 << 20)
            with pytest.raises(WorkspacePathError):
                ws.write_file(name, b"host wrote through a link\n")
        # Removing a link removes the link, never its target.
        ws.remove("main.py")
        assert "main.py" not in {e.name for e in ws.list_dir()}
        ws.remove("etcdir")
        # Paths that leave the workspace are refused before touching anything.
        for bad in ["../canary.txt", "/etc/passwd", "a/../../x", "/box/../etc/passwd"]:
            with pytest.raises(WorkspacePathError):
                split_path(bad)
            with pytest.raises(WorkspacePathError):
                ws.write_file(bad, b"x")
    assert canary.read_bytes() == b"host canary\n"  # noqa: ASYNC240
    await host.check()


# -- isolation between runs ----------------------------------------------------------

WRITER = r"""
import os, sys, time
secret = sys.argv[1]
for path in ["/tmp/secret.txt", "/dev/shm/secret.txt", "secret.txt"]:
    with open(path, "w") as fh:
        fh.write(secret)
print("written", flush=True)
time.sleep(3)
same = [open(p).read() == secret for p in ("/tmp/secret.txt", "/dev/shm/secret.txt")]
print("still", *same)
"""

SNOOPER = r"""
import json, os, sys
secret = sys.stdin.read().strip()  # not in argv: our own cmdline must not contain it
found = []
for top in ["/tmp", "/dev/shm", "/box", "/proc"]:
    for root, dirs, files in os.walk(top):
        if root.startswith("/proc/") and root.count("/") > 2:
            dirs[:] = []
        for name in files:
            path = os.path.join(root, name)
            if top == "/proc" and name not in ("cmdline", "environ"):
                continue
            try:
                with open(path, "rb") as fh:
                    if secret.encode() in fh.read(1 << 20):
                        found.append(path)
            except OSError:
                pass
print(json.dumps({"found": found, "tmp": os.listdir("/tmp"), "shm": os.listdir("/dev/shm")}))
"""


async def test_tmp_and_shm_are_private_to_each_run(runner: Runner, host: HostGuard) -> None:
    secret = "private-" + os.urandom(8).hex()
    written = asyncio.Event()

    def on_event(event: RunnerEvent) -> None:
        if event.kind == "stdout" and b"written" in event.data:
            written.set()

    writer = asyncio.create_task(
        runner.execute(
            ExecutionRequest(language="python", code=WRITER, args=[secret], limits=SMALL),
            on_event=on_event,
        )
    )
    await asyncio.wait_for(written.wait(), timeout=20)
    snooper = await execute(runner, "python", SNOOPER, stdin=secret, limits=SMALL)
    assert snooper.verdict == Verdict.OK, describe(snooper)
    report = json_lines(stdout(snooper))
    assert report == {"found": [], "tmp": [], "shm": []}, report
    assert not writer.done(), "the writer must still be running while B looks"
    first: ExecutionResult = await writer
    assert first.verdict == Verdict.OK, describe(first)
    assert stdout(first) == "written\nstill True True\n"  # A's files were there all along
    await host.check()


# -- compilers are hostile too ---------------------------------------------------------

TEMPLATE_BOMB = """
template <int D, int I> struct Bomb {
    static const long value = Bomb<D - 1, 2 * I>::value + Bomb<D - 1, 2 * I + 1>::value;
};
template <int I> struct Bomb<0, I> { static const long value = 1; };
int main() { return Bomb<40, 0>::value == 0; }
"""

MACRO_BOMB = (
    '#define A "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"\n'
    + "".join(
        f"#define {b} {a} {a} {a} {a} {a} {a} {a} {a} {a} {a}\n"
        for a, b in zip("ABCDEFGH", "BCDEFGHI", strict=True)
    )
    + "const char *s[] = { I };\nint main(void) { return 0; }\n"
)

ERROR_FLOOD = "int main(void) {\n" + "".join(f"    undefined_{i};\n" for i in range(50_000)) + "}\n"


async def test_compiler_bombs(runner: Runner, host: HostGuard) -> None:
    compile_limits = {"cpu_time_s": 3, "wall_time_s": 8, "memory_mb": 256, "output_kb": 64}
    results = await asyncio.gather(
        execute(runner, "c", "#include </dev/random>\n", compile_limits=compile_limits),
        execute(runner, "c", "#include </dev/zero>\nint main(){}\n", compile_limits=compile_limits),
        execute(runner, "cpp", TEMPLATE_BOMB, compile_limits=compile_limits),
        execute(runner, "c", MACRO_BOMB, compile_limits=compile_limits),
        execute(runner, "c", ERROR_FLOOD, compile_limits=compile_limits),
    )
    for result in results:
        assert result.verdict == Verdict.COMPILE_ERROR, describe(result)
        assert result.compile is not None and result.run is None
        c = result.compile
        assert c.verdict in (
            Verdict.TIME_LIMIT, Verdict.MEMORY_LIMIT, Verdict.OUTPUT_LIMIT, Verdict.RUNTIME_ERROR,
        ), describe(result)  # fmt: skip
        assert c.cpu_time_ms <= 3000 + 600, describe(result)
        assert c.memory_kb <= (256 + 1) * 1024, describe(result)
        assert len(c.stdout) <= 64 * 1024 and len(c.stderr) <= 64 * 1024
    # The error flood is cut at the output cap.
    flood = results[-1].compile
    assert flood is not None and flood.stderr_truncated and flood.verdict == Verdict.OUTPUT_LIMIT
    await host.check()


# -- stdin -----------------------------------------------------------------------------


async def test_20mb_stdin(runner: Runner, host: HostGuard) -> None:
    data = ("0123456789abcdef" * 64 + "\n") * (20 * 1024 * 1024 // 1025)
    counter = (
        "import sys, hashlib\nb = sys.stdin.buffer.read()\n"
        "print(len(b), hashlib.sha256(b).hexdigest())\n"
    )
    counted, catted = await asyncio.gather(
        execute(runner, "python", counter, stdin=data, limits={**SMALL, "memory_mb": 128}),
        execute(runner, "bash", "cat", stdin=data, limits={**SMALL, "output_kb": 4096}),
    )
    import hashlib

    assert counted.verdict == Verdict.OK, describe(counted)
    assert stdout(counted).split() == [
        str(len(data)), hashlib.sha256(data.encode()).hexdigest()
    ]  # fmt: skip
    c = run_stage(catted)
    assert catted.verdict == Verdict.OUTPUT_LIMIT, describe(catted)
    assert c.stdout_truncated and c.stdout == data[: 4096 * 1024]
    await host.check()


async def test_program_that_never_reads_stdin(runner: Runner, host: HostGuard) -> None:
    data = "x" * (8 << 20)
    result = await execute(runner, "bash", "echo ignored", stdin=data, limits=SMALL)
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result) == "ignored\n"
    await host.check()


# -- seccomp ---------------------------------------------------------------------------

SECCOMP_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/ptrace.h>
#include <unistd.h>
#include <linux/keyctl.h>

static void report(const char *name, long rc) {
    printf("%s %ld %d\n", name, rc, rc < 0 ? errno : 0);
}

int main(void) {
    char buf[64] = {0};
    errno = 0; report("ptrace", syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0));
    errno = 0; report("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0));
    errno = 0; report("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    errno = 0; report("io_uring_setup", syscall(SYS_io_uring_setup, 8, buf));
    errno = 0; report("bpf", syscall(SYS_bpf, 0, buf, 64));
    errno = 0; report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, -3, 0));
    errno = 0; report("add_key", syscall(SYS_add_key, "user", "k", "v", 1, -3));
    errno = 0; report("userfaultfd", syscall(SYS_userfaultfd, 0));
    errno = 0; report("perf_event_open", syscall(SYS_perf_event_open, buf, 0, -1, -1, 0));
    errno = 0; report("setns", syscall(SYS_setns, 0, 0));
    errno = 0; report("clone3", syscall(SYS_clone3, buf, 64));
    errno = 0; report("getpid", syscall(SYS_getpid) > 0 ? 0 : -1);
    return 0;
}
"""

INT80_C = r"""
#include <stdio.h>
int main(void) {
    puts("before");
    fflush(stdout);
    long ret;
    /* getpid through the 32-bit ABI */
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    printf("after %ld\n", ret);
    return 0;
}
"""


X32_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    puts("before");
    fflush(stdout);
    long ret = syscall(0x40000000L | SYS_getpid); /* the x32 ABI */
    printf("after %ld\n", ret);
    return 0;
}
"""


async def test_seccomp_refuses_dangerous_syscalls(runner: Runner, host: HostGuard) -> None:
    refused, int80, x32 = await asyncio.gather(
        execute(runner, "c", SECCOMP_C, limits=SMALL),
        execute(runner, "c", INT80_C, limits=SMALL),
        execute(runner, "c", X32_C, limits=SMALL),
    )
    assert refused.verdict == Verdict.OK, describe(refused)
    got = {
        name: (int(rc), int(err)) for name, rc, err in map(str.split, stdout(refused).splitlines())
    }
    for name in [
        "ptrace", "mount", "unshare_user", "io_uring_setup", "bpf", "keyctl", "add_key",
        "userfaultfd", "perf_event_open", "setns",
    ]:  # fmt: skip
        assert got[name] == (-1, errno.EPERM), (name, got)
    assert got["clone3"] == (-1, errno.ENOSYS), got
    assert got["getpid"] == (0, 0)
    for result in (int80, x32):  # other syscall ABIs: the process is killed
        run = run_stage(result)
        assert result.verdict == Verdict.RUNTIME_ERROR, describe(result)
        assert run.signal == signal.SIGSYS and run.stdout == "before\n", describe(result)
    await host.check()
