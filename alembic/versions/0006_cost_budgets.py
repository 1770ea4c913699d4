"""cost control: budgets, reservations, cache hits, batch estimates

Revision ID: 0006_cost_budgets
Revises: 0005_hardening_lost_count
Create Date: 2026-11-22 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0006_cost_budgets"
down_revision = "0005_hardening_lost_count"
branch_labels = None
depends_on = None

_MONEY = sa.Numeric(20, 10)


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=True),
        sa.Column("budget_usd", _MONEY, nullable=True),
        sa.Column(
            "period",
            sa.Enum(
                "day",
                "week",
                "month",
                "total",
                name="budget_period",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent_usd", _MONEY, nullable=False),
        sa.Column("reserved_usd", _MONEY, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_budgets_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("api_key_id", name=op.f("uq_budgets_api_key_id")),
    )
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budgets_tenant"), ["tenant"], unique=False)

    op.create_table(
        "reservations",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("budget_id", sa.String(length=40), nullable=False),
        sa.Column("amount_usd", _MONEY, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_reservations")),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reservations_budget_id"), ["budget_id"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("budget_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("cached", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("saved_usd", _MONEY, nullable=True))
        batch_op.add_column(sa.Column("cache_opt_out", sa.Boolean(), nullable=True))
        batch_op.create_index(
            "ix_jobs_api_key_id_finished_at", ["api_key_id", "finished_at"], unique=False
        )

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("budget_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("estimated_cost_usd", _MONEY, nullable=True))
        batch_op.add_column(sa.Column("cache_opt_out", sa.Boolean(), nullable=True))

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cached", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("saved_usd", _MONEY, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("saved_usd")
        batch_op.drop_column("cached")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("cache_opt_out")
        batch_op.drop_column("estimated_cost_usd")
        batch_op.drop_column("budget_id")
        batch_op.drop_column("api_key_id")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_api_key_id_finished_at")
        batch_op.drop_column("cache_opt_out")
        batch_op.drop_column("saved_usd")
        batch_op.drop_column("cached")
        batch_op.drop_column("budget_id")
        batch_op.drop_column("api_key_id")

    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reservations_budget_id"))
    op.drop_table("reservations")

    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budgets_tenant"))
    op.drop_table("budgets")
