"""Persistent sandboxes and their builds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from execbox.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sandboxes_status_owner", "sandboxes", ["status", "owner"])
    op.create_table(
        "sandbox_builds",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "sandbox_id",
            sa.String(32),
            sa.ForeignKey("sandboxes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
    )
    op.create_index("ix_sandbox_builds_sandbox", "sandbox_builds", ["sandbox_id", "version"])


def downgrade() -> None:
    op.drop_table("sandbox_builds")
    op.drop_table("sandboxes")
