"""Connections to the store: SQLite (default, one file) or PostgreSQL, and migrations.

SQLite is tuned for a server: WAL lets readers run beside the writer, and every
write transaction starts with BEGIN IMMEDIATE, because a deferred transaction that
reads and then writes fails at once with "database is locked" under concurrency.
Writes of this process also share one connection, so they queue in order in
asyncio instead of sleeping in SQLite's busy handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=10000",
    # In WAL mode NORMAL keeps the file consistent and loses no commit on a process
    # crash; only an OS crash may drop the last transactions. FULL would fsync per job.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
# Serializes migrations of several processes starting at once on one PostgreSQL.
_MIGRATION_LOCK_ID = 0x65786563626F78


def _sqlite_engine(url: URL, *, writer: bool) -> AsyncEngine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url, pool_size=1 if writer else 4, max_overflow=0, connect_args={"timeout": 10}
    )

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN instead of the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("execbox.store").joinpath("migrations"))
    )
    return config


class Database:
    """A writer and a reader engine (the same one on PostgreSQL)."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = make_url(url)
        self.schema = schema
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.writer = _sqlite_engine(self.url, writer=True)
            self.reader = _sqlite_engine(self.url, writer=False)
        else:
            connect_args: dict[str, Any] = {}
            if schema:
                connect_args["server_settings"] = {"search_path": schema}
            self.writer = self.reader = create_async_engine(
                self.url, pool_size=10, max_overflow=20, pool_pre_ping=True,
                connect_args=connect_args,
            )  # fmt: skip

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on exit."""
        async with self.writer.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def migrate(self) -> None:
        """Brings the tables to the newest migration."""
        async with self.write() as conn:
            if not self.is_sqlite:
                await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
                if self.schema:
                    quoted = conn.dialect.identifier_preparer.quote_identifier(self.schema)
                    await conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            await conn.run_sync(_upgrade)

    async def close(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def _upgrade(connection: sa.Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
