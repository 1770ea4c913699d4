"""The usage ledger: one row per job attempt that a backend completed, written in the
transaction that stores the job's final state (a unique key on job and attempt)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from promptq.models import UsageRecord

__all__ = ["insert_usage_rows"]

_USAGE: sa.Table = UsageRecord.__table__  # type: ignore[assignment]
_LEDGER_COLUMNS = tuple(c.name for c in _USAGE.c if c.name != "id")
# Postgres: a group's ledger rows in one INSERT of fixed shape, each column an array
# (a multi-row VALUES list would be compiled anew by SQLAlchemy and parsed anew by psycopg
# for every group size, ~0.2 ms per row).
_LEDGER_UNNEST = sa.insert(_USAGE).from_select(
    _LEDGER_COLUMNS,
    sa.select(
        sa.func.unnest(
            *(sa.bindparam(c, type_=postgresql.ARRAY(_USAGE.c[c].type)) for c in _LEDGER_COLUMNS)
        )
        .table_valued(*_LEDGER_COLUMNS)
        .render_derived()
    ),
)
# Elsewhere (the demo's SQLite) a multi-row VALUES list; SQLite builds before 3.32 allow
# 999 parameters in one statement.
_LEDGER_ROWS_PER_INSERT = 100


def insert_usage_rows(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add ledger rows (dicts of the usage_records columns but `id`) in the connection's
    transaction: on Postgres one INSERT whatever their number."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(_LEDGER_UNNEST, {c: [row[c] for row in rows] for c in _LEDGER_COLUMNS})
        return
    for start in range(0, len(rows), _LEDGER_ROWS_PER_INSERT):
        conn.execute(sa.insert(_USAGE).values(rows[start : start + _LEDGER_ROWS_PER_INSERT]))
