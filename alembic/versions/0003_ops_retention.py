"""retention: the usage ledger and batches outlive the rows they name

usage_records.job_id no longer cascades from jobs (the ledger is the bill: purging a
finished job must keep it), batches.input_file_id no longer blocks deleting a file, and
finished native jobs get an index so retention finds them without a scan.

Revision ID: 0003_ops_retention
Revises: 0002
Create Date: 2026-11-22 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0003_ops_retention"
down_revision = "0002"
branch_labels = None
depends_on = None

_NATIVE = "batch_id IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_constraint("fk_usage_records_job_id_jobs", type_="foreignkey")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_constraint("fk_batches_input_file_id_files", type_="foreignkey")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_native_finished_at",
            ["finished_at"],
            unique=False,
            postgresql_where=sa.text(_NATIVE),
            sqlite_where=sa.text(_NATIVE),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_native_finished_at")
    # Rows whose job or input file was purged would break the old constraints.
    op.execute("DELETE FROM usage_records WHERE job_id NOT IN (SELECT id FROM jobs)")
    op.execute("DELETE FROM batches WHERE input_file_id NOT IN (SELECT id FROM files)")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_batches_input_file_id_files", "files", ["input_file_id"], ["id"]
        )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_usage_records_job_id_jobs", "jobs", ["job_id"], ["id"], ondelete="CASCADE"
        )
