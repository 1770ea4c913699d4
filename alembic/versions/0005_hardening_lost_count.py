"""jobs.lost_count: how many times a job was in flight when its worker was lost

Revision ID: 0005_hardening_lost_count
Revises: 0004_hardening_webhook_secrets
Create Date: 2026-11-22 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005_hardening_lost_count"
down_revision = "0004_hardening_webhook_secrets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lost_count", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("lost_count")
