"""Connections to the store: SQLite (default, one file) or PostgreSQL, and migrations.

SQLite runs inline, on the event loop's thread: a statement on a local WAL file
takes microseconds, less than the thread hop of an async driver (aiosqlite hops
per statement), and since a transaction then never yields to the loop, this
process's transactions cannot contend with each other. Writes start with BEGIN
IMMEDIATE, because a deferred transaction that reads and then writes fails at
once with "database is locked" when another process (a CLI, a second server)
writes too; busy_timeout makes those waits rather than errors. Checkpoints of
the write-ahead log, which fsync, run in a thread (wal.py), not in a commit.

PostgreSQL goes through asyncpg, truly async.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from execbox.store.wal import WalCheckpointer

T = TypeVar("T")

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    # In WAL mode NORMAL keeps the file consistent and loses no commit on a process
    # crash; only an OS crash may drop the last transactions. FULL would fsync per job.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    # Checkpoints are taken in a thread instead (wal.py): inline, one stalls a commit.
    "PRAGMA wal_autocheckpoint=0",
)
# Serializes migrations of several processes starting at once on one PostgreSQL.
_MIGRATION_LOCK_ID = 0x65786563626F78


class Connection(Protocol):
    """What the repository uses of a connection: SQLAlchemy's AsyncConnection, or
    the inline SQLite connection below."""

    async def execute(
        self, statement: sa.Executable, parameters: Any = None
    ) -> sa.CursorResult[Any]: ...

    async def run_sync(self, fn: Callable[[sa.Connection], T]) -> T: ...


class _InlineConnection:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    async def execute(
        self, statement: sa.Executable, parameters: Any = None
    ) -> sa.CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    async def run_sync(self, fn: Callable[[sa.Connection], T]) -> T:
        return fn(self._conn)


def _sqlite_file(url: URL) -> str | None:
    """The path of an SQLite database in a file (None in memory)."""
    return url.database if url.database and url.database != ":memory:" else None


def _sqlite_engine(url: URL) -> sa.Engine:
    if path := _sqlite_file(url):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # One connection is enough: nothing runs beside a transaction in this process.
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        poolclass=sa.pool.StaticPool,
        connect_args={"check_same_thread": False},
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # No implicit BEGIN from the driver: writes say BEGIN IMMEDIATE themselves,
        # reads run in autocommit (each statement sees a consistent snapshot).
        dbapi_connection.isolation_level = None
        for pragma in SQLITE_PRAGMAS:
            dbapi_connection.execute(pragma)

    return engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("execbox.store").joinpath("migrations"))
    )
    return config


class Database:
    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = make_url(url)
        self.schema = schema
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._sqlite: sa.Engine | None = None
        # The one SQLite connection, checked out once: a pool checkout and its
        # reset-on-return per transaction cost more than a small transaction itself.
        self._sqlite_conn: sa.Connection | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._async: AsyncEngine | None = None
        # Held across each SQLite transaction (taken at once when free, which is always
        # unless a caller awaits real I/O inside one): without it, a second transaction
        # would start on the same connection in the middle of the first.
        self._sqlite_lock = asyncio.Lock()
        if self.is_sqlite:
            self._sqlite = _sqlite_engine(self.url)
            if path := _sqlite_file(self.url):
                self._checkpointer = WalCheckpointer(path)
        else:
            connect_args: dict[str, Any] = {}
            if schema:
                connect_args["server_settings"] = {"search_path": schema}
            self._async = create_async_engine(
                self.url, pool_size=10, max_overflow=20, pool_pre_ping=True,
                connect_args=connect_args,
            )  # fmt: skip

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        """A write transaction, committed on exit, rolled back on error."""
        if self._sqlite is not None:
            async with self._sqlite_lock:
                with self._sqlite_transaction() as conn:
                    yield _InlineConnection(conn)
        else:
            assert self._async is not None
            async with self._async.begin() as conn:
                yield conn

    def _sqlite_connection(self) -> sa.Connection:
        assert self._sqlite is not None
        if self._sqlite_conn is None or self._sqlite_conn.invalidated:
            self._sqlite_conn = self._sqlite.connect()
        return self._sqlite_conn

    @contextlib.contextmanager
    def _sqlite_transaction(self) -> Iterator[sa.Connection]:
        conn = self._sqlite_connection()
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        if self._checkpointer is not None:
            self._checkpointer.written()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        if self._sqlite is not None:
            async with self._sqlite_lock:
                conn = self._sqlite_connection()
                try:
                    yield _InlineConnection(conn)
                finally:
                    # Ends SQLAlchemy's implicit transaction; at the driver, in
                    # autocommit, there is none.
                    conn.rollback()
        else:
            assert self._async is not None
            async with self._async.connect() as conn:
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
                    await conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
            await conn.run_sync(_upgrade)

    async def close(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.close()
        if self._sqlite_conn is not None:
            self._sqlite_conn.close()
            self._sqlite_conn = None
        if self._sqlite is not None:
            self._sqlite.dispose()
        if self._async is not None:
            await self._async.dispose()


def _upgrade(connection: sa.Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
