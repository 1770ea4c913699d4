"""batches.retry_of: the batch whose failed lines a batch re-runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retry_of", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("retry_of")
