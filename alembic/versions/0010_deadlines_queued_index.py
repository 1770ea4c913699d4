"""ix_jobs_queued_deadline_at: the sweeper finds queued native jobs past their deadline
without reading the queued batch lines

Revision ID: 0010_deadlines_queued_index
Revises: 0009_scale_batch_max_cost
Create Date: 2026-11-22 11:10:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0010_deadlines_queued_index"
down_revision = "0009_scale_batch_max_cost"
branch_labels = None
depends_on = None

_QUEUED_WITH_DEADLINE = "status = 'queued' AND deadline_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_queued_deadline_at",
            ["deadline_at"],
            unique=False,
            postgresql_where=sa.text(_QUEUED_WITH_DEADLINE),
            sqlite_where=sa.text(_QUEUED_WITH_DEADLINE),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_queued_deadline_at")
