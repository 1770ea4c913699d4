"""jobs.deadline_at: the time after which a native job is no longer sent to its provider

Revision ID: 0008_traffic2_job_deadline
Revises: 0007_traffic_waiting_served
Create Date: 2026-11-22 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0008_traffic2_job_deadline"
down_revision = "0007_traffic_waiting_served"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("deadline_at")
