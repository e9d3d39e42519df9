"""One real server for the client suite, with API keys on (the SDK sends them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from execbox.client import Client
from kit.servers import API_KEY, Server, serve


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from serve({"EXECBOX_API_KEYS": API_KEY})


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key=API_KEY) as client:
        yield client
