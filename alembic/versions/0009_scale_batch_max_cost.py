"""batches.max_cost_usd: the client's limit, checked when the batch is validated after
`POST /v1/batches` answered

Revision ID: 0009_scale_batch_max_cost
Revises: 0008_traffic2_job_deadline
Create Date: 2026-11-22 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0009_scale_batch_max_cost"
down_revision = "0008_traffic2_job_deadline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_cost_usd", sa.Numeric(precision=20, scale=10), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("max_cost_usd")
