"""Fixtures of the sandboxes suite: a real engine (bwrap, cgroups, seccomp) for the
session tests, and a real server for the API tests. Everything runs under a sandbox
uid of its own, so "no process of the sandbox uid is left" is an exact check."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from execbox.config import Settings
from execbox.sandbox import Sandbox
from execbox.sandbox.netns import NamespaceDialer

TEST_UID = 60178


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    # Under /tmp (world-traversable): bwrap runs as the sandbox uid and must reach
    # the workspaces and the files it binds.
    data_dir = Path(tempfile.mkdtemp(prefix="execbox-sbx-data-"))
    runtime_dir = Path(tempfile.mkdtemp(prefix="execbox-sbx-run-"))
    runtime_dir.chmod(0o711)
    cgroup_name = f"execbox-sbx-tests-{os.getpid()}"
    yield Settings(
        data_dir=data_dir,
        runtime_dir=runtime_dir,
        sandbox_uid=TEST_UID,
        sandbox_gid=TEST_UID,
        cgroup_name=cgroup_name,
        warm_pool_size=0,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(runtime_dir, ignore_errors=True)
    for parent in Path("/sys/fs/cgroup").glob(f"*/{cgroup_name}"):
        with contextlib.suppress(OSError):
            parent.rmdir()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def engine(settings: Settings) -> AsyncIterator[Sandbox]:
    sandbox = Sandbox(settings)
    yield sandbox
    await sandbox.close()


@pytest.fixture(scope="session")
def dialer() -> Iterator[NamespaceDialer]:
    dialer = NamespaceDialer()
    yield dialer
    dialer.close()
