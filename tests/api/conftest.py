"""Fixtures of the API suite: real servers (uvicorn subprocesses running the real
sandbox), on SQLite and on PostgreSQL, each PostgreSQL run in a schema of its own
that is dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from kit.databases import PG_URL, drop_schema
from kit.servers import Server, make_server


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs_postgres)]
)
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Settings selecting the database of a server; one schema per PostgreSQL run."""
    if request.param == "sqlite":
        yield {}
        return
    schema = f"execbox_test_{secrets.token_hex(4)}"
    try:
        yield {"EXECBOX_DATABASE_URL": PG_URL, "EXECBOX_DATABASE_SCHEMA": schema}
    finally:
        drop_schema(schema)


@pytest.fixture(scope="session")
def server(backend: dict[str, str]) -> Iterator[Server]:
    """The server most tests share, per backend."""
    yield from make_server({**backend, "EXECBOX_WEBHOOK_BACKOFF_S": "0.05"})


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
