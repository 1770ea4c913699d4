"""api_keys: a webhook signing secret per key, and the previous one during a rotation

Revision ID: 0004_hardening_webhook_secrets
Revises: 0003_ops_retention
Create Date: 2026-11-22 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0004_hardening_webhook_secrets"
down_revision = "0003_ops_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing keys get no secret: nobody could be shown it. They keep the deployment's
    # secret until `promptq keys rotate-webhook-secret` gives them their own.
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_secret", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("webhook_secret_previous", sa.String(length=100), nullable=True)
        )
        batch_op.add_column(
            sa.Column("webhook_secret_previous_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("webhook_secret_previous_until")
        batch_op.drop_column("webhook_secret_previous")
        batch_op.drop_column("webhook_secret")
