"""jobs.waiting_reason and jobs.served_by: why a running job waits, which model served it

Revision ID: 0007_traffic_waiting_served
Revises: 0006_cost_budgets
Create Date: 2026-11-22 04:15:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007_traffic_waiting_served"
down_revision = "0006_cost_budgets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("served_by", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("served_by")
        batch_op.drop_column("waiting_reason")
