"""Tables. Changes here need a migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone and returns naive ones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    # Time-ordered ids: the primary key doubles as the "newest first" order and cursor.
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("language", sa.String(40), nullable=False),
    sa.Column("language_version", sa.String(200)),
    sa.Column("verdict", sa.String(32)),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("outcome", sa.JSON),
    sa.Column("error_message", sa.Text),
    sa.Column("error_debug_id", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("event_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    # Scale-out: who runs the job, and when it last said it still does (the lease).
    sa.Column("worker_id", sa.String(64)),
    sa.Column("heartbeat_at", UTCDateTime),
    sa.Column("interactive", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_jobs_status_id", "status", "id"),
    sa.Index("ix_jobs_finished_at", "finished_at"),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column(
        "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("data", sa.JSON),
)

# Persistent sandboxes and their builds (sandboxes/store.py reads and writes them).
sandboxes = sa.Table(
    "sandboxes",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("info", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("ix_sandboxes_status_owner", "status", "owner"),
)

sandbox_builds = sa.Table(
    "sandbox_builds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "sandbox_id",
        sa.String(32),
        sa.ForeignKey("sandboxes.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("info", sa.JSON, nullable=False),
    sa.Index("ix_sandbox_builds_sandbox", "sandbox_id", "version"),
)
