"""Interactive jobs are marked by a column (their stdin is a live connection).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("interactive", sa.Boolean, nullable=False, server_default=sa.false())
        )
    # Before this column, an interactive job was marked by the reason of its first event.
    marked = '%"reason": "interactive"%'
    op.execute(
        sa.text(
            "UPDATE jobs SET interactive = true WHERE id IN (SELECT job_id FROM job_events "
            "WHERE seq = 1 AND kind = 'status' AND CAST(data AS TEXT) LIKE :marked)"
        ).bindparams(marked=marked)
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("interactive")
