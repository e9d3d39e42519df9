"""Fixtures of the engine suite: one real Runner for the whole session.

Everything here runs in the real sandbox (bwrap, cgroups, seccomp): nothing of the
sandbox is mocked. The session uses its own data dir, its own parent cgroup and its
own sandbox uids, so that "no process of those uids is left on the host" is an
exact check even while other execbox processes run on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from execbox.config import Settings
from execbox.runner import Runner
from kit.host import HostGuard, claim_uids, sandbox_pids, settings_uids

ENGINE_DIR = Path(__file__).resolve().parent
SECRET_ENV = "EXECBOX_TEST_SECRET"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs every async test of this directory in the session's event loop, the loop the
    session-scoped runner lives in (its warm pool and child watchers belong to it)."""
    from pytest_asyncio import is_async_test

    marker = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if is_async_test(item) and ENGINE_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(marker, append=False)


@pytest.fixture(scope="session")
def host_secret() -> Iterator[str]:
    """A secret in this (the server's) environment that no program may see."""
    value = "s3cr3t-" + secrets.token_hex(16)
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = value
    yield value
    if old is None:
        os.environ.pop(SECRET_ENV, None)
    else:
        os.environ[SECRET_ENV] = old


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    data_dir = Path(tempfile.mkdtemp(prefix="execbox-engine-data-"))
    # Under /tmp (world-traversable), not pytest's 0700 tmp_path: bwrap runs as the
    # sandbox uid and must reach the workspaces and files it binds.
    runtime_dir = Path(tempfile.mkdtemp(prefix="execbox-engine-run-"))
    runtime_dir.chmod(0o711)
    cgroup_name = f"execbox-tests-{os.getpid()}"
    uids = claim_uids()
    yield Settings(
        data_dir=data_dir,
        runtime_dir=runtime_dir,
        **uids.settings,
        cgroup_name=cgroup_name,
        warm_pool_size=2,
        allow_network=False,
    )
    uids.release()
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(runtime_dir, ignore_errors=True)
    for parent in Path("/sys/fs/cgroup").glob(f"*/{cgroup_name}"):
        with contextlib.suppress(OSError):
            parent.rmdir()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def runner(settings: Settings, host_secret: str) -> AsyncIterator[Runner]:
    # host_secret is set before the runner (and its warm pool) starts.
    assert os.environ[SECRET_ENV] == host_secret
    runner = await Runner.create(settings)
    yield runner
    await runner.close()
    for _ in range(100):  # SIGKILL is delivered asynchronously: allow a moment
        if not sandbox_pids(settings_uids(settings)):
            break
        await asyncio.sleep(0.05)
    assert sandbox_pids(settings_uids(settings)) == [], (
        "sandbox processes survived the runner's close()"
    )
    left = [*settings.workspaces_dir.iterdir(), *settings.ptys_dir.iterdir()]
    assert left == [], f"workspaces or ptys left mounted after close(): {left}"


@pytest_asyncio.fixture(loop_scope="session")
async def host(runner: Runner) -> HostGuard:
    """Snapshot of the host before a hostile test; ``await host.check()`` after it."""
    guard = HostGuard(runner)
    await guard.snapshot()
    return guard


@pytest_asyncio.fixture(loop_scope="session")
async def one_box(settings: Settings) -> AsyncIterator[Runner]:
    """A runner whose pool holds a single box (the session's runner keeps its own), so
    that an execution provably runs in the box the one before it used."""
    single = await Runner.create(settings.model_copy(update={"warm_pool_size": 1}))
    yield single
    await single.close()


@pytest_asyncio.fixture(loop_scope="session")
async def reuse_host(runner: Runner, one_box: Runner) -> HostGuard:
    """The host guard, aware of both runners' idle boxes."""
    guard = HostGuard(runner, one_box)
    await guard.snapshot()
    return guard
