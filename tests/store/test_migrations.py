"""The migrations and the tables the code uses agree: autogenerate, run against a
freshly migrated database, proposes nothing."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from execbox.store import Database
from execbox.store.schema import metadata


def _differences(connection: sa.Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"render_as_batch": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_build_exactly_the_tables_in_use(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    db = Database(url)
    await db.migrate()
    await db.close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            assert {"jobs", "job_events", "sandboxes", "sandbox_builds"} <= tables
            assert _differences(connection) == []
    finally:
        engine.dispose()
