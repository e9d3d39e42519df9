"""A real server for the browser test (no API keys: the playground as used locally)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from client_kit import Server, serve


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from serve({})
