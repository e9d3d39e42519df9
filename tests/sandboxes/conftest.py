"""Fixtures of the sandboxes suite: a real engine (bwrap, cgroups, seccomp) for the
session tests, and a real server for the API tests. Each runs under sandbox uids of its
own (kit.host.claim_uids), so "no process of those uids is left" is an exact check."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from execbox.config import Settings
from execbox.engine import Sandbox
from execbox.engine.netns import NamespaceDialer
from kit.host import claim_uids
from kit.servers import API_KEY, Server, make_server


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    # Under /tmp (world-traversable): bwrap runs as the sandbox uid and must reach
    # the workspaces and the files it binds.
    data_dir = Path(tempfile.mkdtemp(prefix="execbox-sbx-data-"))
    runtime_dir = Path(tempfile.mkdtemp(prefix="execbox-sbx-run-"))
    runtime_dir.chmod(0o711)
    cgroup_name = f"execbox-sbx-tests-{os.getpid()}"
    uids = claim_uids()
    yield Settings(
        data_dir=data_dir,
        runtime_dir=runtime_dir,
        **uids.settings,
        cgroup_name=cgroup_name,
        warm_pool_size=0,
    )
    uids.release()
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


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """A real execbox server running the real sandbox, on SQLite."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="execbox-sbx-api-run-"))
    runtime_dir.chmod(0o711)
    try:
        yield from make_server(
            {
                "EXECBOX_CGROUP_NAME": f"execbox-sbx-api-{os.getpid()}",
                "EXECBOX_RUNTIME_DIR": str(runtime_dir),
                "EXECBOX_WARM_POOL_SIZE": "0",
                "EXECBOX_SANDBOX_WARM_POOL": "1",
                "EXECBOX_SANDBOX_MAX_COMMANDS": "6",
                "EXECBOX_WORKERS": "1",
                "EXECBOX_MAX_SANDBOXES": "4",
                "EXECBOX_SANDBOX_FILE_MB": "1",
                "EXECBOX_SANDBOX_START_WAIT_S": "20",
                "EXECBOX_API_KEYS": API_KEY,
                "EXECBOX_ALLOW_NETWORK": "1",  # for a build's deps step only
            }
        )
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """A client whose sandboxes are deleted after the test."""
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
        yield client
        for info in client.get("/v1/sandboxes", params={"status": "running"}).json():
            client.delete(f"/v1/sandboxes/{info['id']}")
