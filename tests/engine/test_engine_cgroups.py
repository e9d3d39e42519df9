"""cgroup detection and both backends.

This host is a v1 hybrid, so v1 is exercised for real by every other test here; the v2
path runs against a realistic fake cgroupfs tree (files as the kernel lays them out),
and detection is fed fake mount tables of pure v2, hybrid and v1-with-joint-mounts hosts.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from execbox.engine import cgroups
from execbox.engine.cgroups import (
    V1Manager,
    V1RunCgroup,
    V2Manager,
    V2RunCgroup,
    detect,
)
from execbox.engine.errors import SandboxUnavailable
from execbox.runner import Runner

V2_ROOT_FILES = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
    "cgroup.subtree_control": "\n",
    "cgroup.procs": "",
    "cgroup.max.depth": "max\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}

V2_CHILD_FILES = {
    "cgroup.controllers": "cpu memory pids\n",
    "cgroup.subtree_control": "\n",
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.kill": "",
    "cgroup.type": "domain\n",
    "cpu.max": "max 100000\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n",
    "memory.current": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.max": "max\n",
    "memory.peak": "0\n",
    "memory.swap.current": "0\n",
    "memory.swap.max": "max\n",
    "pids.current": "0\n",
    "pids.max": "max\n",
}


def _populate(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _mountinfo(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return path


# Unrelated mounts every real mount table has.
BASE_MOUNTS = [
    "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw",
    "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
    "24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw",
]


@pytest.fixture
def v2_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A pure cgroup v2 host: one cgroup2 mount with every controller; returns
    (mount point, mountinfo file)."""
    root = tmp_path / "cgroup"
    _populate(root, V2_ROOT_FILES)
    # The kernel creates a child's files on mkdir; here the parent exists already.
    _populate(root / "execbox", V2_CHILD_FILES)
    mountinfo = _mountinfo(
        tmp_path,
        [
            *BASE_MOUNTS,
            f"30 24 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
            "rw,nsdelegate,memory_recursiveprot",
        ],
    )
    return root, mountinfo


def test_detect_picks_v2_on_a_pure_v2_host(v2_tree: tuple[Path, Path]) -> None:
    root, mountinfo = v2_tree
    manager = detect("auto", root, "execbox", mountinfo)
    assert isinstance(manager, V2Manager) and manager.version == 2
    assert manager.parent == root / "execbox"
    assert isinstance(detect("2", root, "execbox", mountinfo), V2Manager)
    with pytest.raises(SandboxUnavailable, match="no usable cgroup"):
        detect("1", root, "execbox", mountinfo)  # no v1 hierarchy there


def test_v2_setup_enables_controllers_for_the_children(v2_tree: tuple[Path, Path]) -> None:
    root, mountinfo = v2_tree
    manager = detect("auto", root, "execbox", mountinfo)
    manager.setup(cpu_weight=10)
    for level in (root, root / "execbox"):
        enabled = (level / "cgroup.subtree_control").read_text().split()
        assert {"+memory", "+pids", "+cpu"} <= set(enabled) or {"memory", "pids", "cpu"} <= set(
            enabled
        ), (level, enabled)
    # All sandboxes together weigh less than the server beside them.
    assert (root / "execbox" / "cpu.weight").read_text() == "10"


async def test_sandboxes_weigh_less_than_the_server_for_cpu(runner: Runner) -> None:
    """The real hierarchy (v1 here or v2): the parent of every run has the configured
    weight, so the server's requests are served at once when programs saturate the CPU."""
    weight = runner.settings.sandbox_cpu_weight
    assert weight < 100
    manager = runner.sandbox.cgroups
    if isinstance(manager, V1Manager):
        assert (manager.parents["cpu"] / "cpu.shares").read_text().strip() == str(
            weight * 1024 // 100
        )
    else:
        assert isinstance(manager, V2Manager)
        assert (manager.parent / "cpu.weight").read_text().strip() == str(weight)


def test_v2_setup_says_what_is_missing(v2_tree: tuple[Path, Path]) -> None:
    root, _ = v2_tree
    (root / "cgroup.controllers").write_text("cpuset memory pids\n")  # no cpu
    with pytest.raises(SandboxUnavailable, match=r"lacks the controllers \['cpu'\]"):
        V2Manager(root, "execbox").setup()


def test_v2_run_cgroup_limits_accounting_and_kill(v2_tree: tuple[Path, Path]) -> None:
    root, mountinfo = v2_tree
    manager = detect("auto", root, "execbox", mountinfo)
    run = manager.create("run1")
    assert isinstance(run, V2RunCgroup)
    path = root / "execbox" / "run1"
    assert path.is_dir()
    assert run.procs_files == [str(path / "cgroup.procs")]
    _populate(path, V2_CHILD_FILES)  # what the kernel would have created with the directory

    run.set_limits(256 << 20, 64, cpus=0.5)
    assert (path / "memory.max").read_text() == str(256 << 20)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "pids.max").read_text() == "64"
    assert (path / "cpu.max").read_text() == "50000 100000"

    # Counters cannot be reset on v2: CPU time is measured from a baseline.
    (path / "cpu.stat").write_text("usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n")
    run.start_accounting()
    assert run.cpu_ns() == 0
    (path / "cpu.stat").write_text("usage_usec 1255000\nuser_usec 1000000\nsystem_usec 255000\n")
    assert run.cpu_ns() == 1_250_000_000

    (path / "memory.peak").write_text(f"{100 << 20}\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    stats = run.stats()
    assert stats.cpu_ns == 1_250_000_000
    assert stats.memory_peak_bytes == 100 << 20
    assert stats.oom_kills == 1

    # Kernels before 5.19 have no memory.peak: memory.current is the fallback.
    (path / "memory.peak").unlink()
    (path / "memory.current").write_text(f"{7 << 20}\n")
    assert run.stats().memory_peak_bytes == 7 << 20

    run.kill()
    assert (path / "cgroup.kill").read_text() == "1"
    assert run.pids() == []


def test_v2_kill_also_signals_listed_processes(v2_tree: tuple[Path, Path]) -> None:
    """Without cgroup.kill (kernels before 5.14), kill() SIGKILLs what cgroup.procs lists."""
    root, _ = v2_tree
    path = root / "execbox" / "run2"
    _populate(path, V2_CHILD_FILES)
    (path / "cgroup.kill").unlink()
    victim = subprocess.Popen(["/bin/sleep", "60"])
    try:
        (path / "cgroup.procs").write_text(f"{victim.pid}\n")
        run = V2RunCgroup(path)
        assert run.pids() == [victim.pid]
        # The fake file keeps listing the pid (a real one empties): kill() gives up after
        # its bounded passes instead of looping forever.
        run.kill()
        assert victim.wait(timeout=10) == -9
    finally:
        victim.kill()
        victim.wait()


def test_v2_swap_limit_is_skipped_without_swap_accounting(v2_tree: tuple[Path, Path]) -> None:
    root, _ = v2_tree
    path = root / "execbox" / "run3"
    _populate(path, V2_CHILD_FILES)
    (path / "memory.swap.max").unlink()
    V2RunCgroup(path).set_limits(64 << 20, 8)
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert not (path / "memory.swap.max").exists()
    assert not (path / "cpu.max").read_text().startswith("50000")  # cpus not asked: untouched


def test_detect_picks_v1_on_this_hybrid_host() -> None:
    text = Path("/proc/self/mountinfo").read_text()
    if " - cgroup " not in text:
        pytest.skip("this host has no cgroup v1 hierarchy")
    manager = detect()
    assert isinstance(manager, V1Manager) and manager.version == 1
    assert set(manager.parents) == {"memory", "pids", "cpuacct", "cpu"}


def _v1_tree(tmp_path: Path, joint_cpu: bool) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    lines = [*BASE_MOUNTS, f"25 24 0:23 / {root} ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro"]
    mounts = {"memory": ["memory"], "pids": ["pids"], "devices": ["devices"]}
    if joint_cpu:
        mounts["cpu,cpuacct"] = ["cpu", "cpuacct"]
    else:
        mounts["cpu"], mounts["cpuacct"] = ["cpu"], ["cpuacct"]
    for n, (name, controllers) in enumerate(mounts.items()):
        (root / name).mkdir(parents=True)
        (root / name / "cgroup.procs").write_text("")
        options = ",".join(["rw", *controllers])
        lines.append(
            f"{40 + n} 25 0:{40 + n} / {root / name} rw,nosuid,nodev,noexec,relatime "
            f"shared:{20 + n} - cgroup cgroup {options}"
        )
    # A hybrid's cgroup2 mount has no controllers.
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("\n")
    lines.append(
        f"60 25 0:60 / {root / 'unified'} rw,nosuid,nodev,noexec,relatime shared:10 - "
        "cgroup2 cgroup2 rw,nsdelegate"
    )
    return root, _mountinfo(tmp_path, lines)


def test_detect_picks_v1_on_a_hybrid_with_a_controllerless_cgroup2(tmp_path: Path) -> None:
    root, mountinfo = _v1_tree(tmp_path, joint_cpu=False)
    manager = detect("auto", root, "execbox", mountinfo)
    assert isinstance(manager, V1Manager)
    assert manager.parents["memory"] == root / "memory" / "execbox"
    assert manager.parents["cpuacct"] == root / "cpuacct" / "execbox"
    with pytest.raises(SandboxUnavailable):
        detect("2", root, "execbox", mountinfo)


def test_v1_renew_makes_only_a_new_memory_cgroup(tmp_path: Path) -> None:
    """Between the commands of a box: memory peak and charges cannot be reset, so the
    memory cgroup is new; the other hierarchies' are kept (their counters are reset)."""
    root, mountinfo = _v1_tree(tmp_path, joint_cpu=False)
    manager = detect("auto", root, "execbox", mountinfo)
    manager.setup()
    first = manager.create("run1")
    assert isinstance(first, V1RunCgroup)
    renewed = manager.renew(first, "run2")
    assert isinstance(renewed, V1RunCgroup)
    assert renewed.by_controller["memory"] == root / "memory" / "execbox" / "run2"
    assert renewed.by_controller["memory"].is_dir()
    for controller in ("pids", "cpu", "cpuacct"):
        assert renewed.by_controller[controller] == first.by_controller[controller]
    # A quota of the command before does not stay: no cpus means no quota.
    (first.by_controller["memory"] / "memory.limit_in_bytes").write_text("0")
    (renewed.by_controller["memory"] / "memory.limit_in_bytes").write_text("0")
    first.set_limits(64 << 20, 10, cpus=0.5)
    assert (first.by_controller["cpu"] / "cpu.cfs_quota_us").read_text() == "50000"
    renewed.set_limits(64 << 20, 10)
    assert (renewed.by_controller["cpu"] / "cpu.cfs_quota_us").read_text() == "-1"
    # The kernel refuses quotas under 1 ms (EINVAL, a 500 once): a tiny share gets 1 ms.
    renewed.set_limits(64 << 20, 10, cpus=5e-324)
    assert (renewed.by_controller["cpu"] / "cpu.cfs_quota_us").read_text() == "1000"


def test_v1_with_joint_cpu_cpuacct_mount(tmp_path: Path) -> None:
    """systemd hosts mount cpu and cpuacct together (/sys/fs/cgroup/cpu,cpuacct)."""
    root, mountinfo = _v1_tree(tmp_path, joint_cpu=True)
    manager = detect("auto", root, "execbox", mountinfo)
    assert isinstance(manager, V1Manager)
    assert manager.parents["cpu"] == manager.parents["cpuacct"] == root / "cpu,cpuacct" / "execbox"
    manager.setup()
    run = manager.create("run1")
    assert isinstance(run, V1RunCgroup)
    assert (root / "cpu,cpuacct" / "execbox" / "run1").is_dir()
    # Joining the run writes each hierarchy's cgroup.procs once.
    assert len(run.procs_files) == len(set(run.procs_files)) == 3
    run.remove()
    assert not (root / "cpu,cpuacct" / "execbox" / "run1").exists()


def test_v1_set_limits_order_keeps_memsw_above_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """memory.memsw.limit_in_bytes may never be below memory.limit_in_bytes (the kernel
    refuses such a write): growing writes memsw first, shrinking writes it last."""
    dirs = {c: tmp_path / c / "run" for c in ("memory", "pids", "cpuacct", "cpu")}
    for d in dirs.values():
        d.mkdir(parents=True)
    mem = dirs["memory"]
    (mem / "memory.limit_in_bytes").write_text(str(100 << 20))
    (mem / "memory.memsw.limit_in_bytes").write_text(str(100 << 20))
    writes: list[str] = []
    real_write = cgroups._write

    def recording_write(path: Path, value: str) -> None:
        writes.append(path.name)
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", recording_write)
    run = V1RunCgroup(dirs)
    run.set_limits(200 << 20, 10)
    assert writes[:2] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    writes.clear()
    run.set_limits(50 << 20, 10, cpus=1.5)
    assert writes[:2] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    assert (mem / "memory.limit_in_bytes").read_text() == str(50 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(50 << 20)
    assert (dirs["pids"] / "pids.max").read_text() == "10"
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "150000"
    assert (dirs["cpu"] / "cpu.cfs_period_us").read_text() == "100000"


def test_v2_setup_in_a_container_moves_root_processes_to_a_leaf(
    v2_tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's cgroupns root holding processes refuses to delegate (EBUSY, the
    kernel's "no internal processes" rule) until they sit in a leaf cgroup."""
    root, _ = v2_tree
    (root / "cgroup.procs").write_text("1\n4242\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "execbox-server").mkdir()
    (root / "execbox-server" / "cgroup.procs").write_text("")
    real_write = cgroups._write

    def kernel_like_write(path: Path, value: str) -> None:
        if path == root / "cgroup.subtree_control" and (root / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy")
        if path.name == "cgroup.procs" and path.parent != root:
            # A move: the kernel takes the pid out of its old cgroup.
            old = (root / "cgroup.procs").read_text().split()
            (root / "cgroup.procs").write_text("\n".join(p for p in old if p != value))
            with open(path, "a") as fh:
                fh.write(value + "\n")
            return
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", kernel_like_write)
    V2Manager(root, "execbox").setup()
    assert (root / "execbox-server" / "cgroup.procs").read_text().split() == ["1", "4242"]
    assert "+memory" in (root / "cgroup.subtree_control").read_text()
