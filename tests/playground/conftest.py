"""A real server for the browser test (no API keys: the playground as used locally)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kit.servers import Server, serve


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from serve({})
