"""Running a group of guarded UPDATEs (one per finished job) in as few round trips as the
driver allows, and telling which of them matched."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

__all__ = ["Guarded", "run_guarded"]

#: One guarded UPDATE and its parameters; it matches at most its one row.
Guarded = tuple[sa.Update, dict[str, Any]]


def _together(conn: sa.Connection, updates: list[Guarded]) -> bool:
    # One executemany per statement (psycopg sends them in a pipeline: one round trip).
    # Only the total row count comes back, so this tells just whether every guard held.
    by_statement: dict[sa.Update, list[dict[str, Any]]] = {}
    for stmt, params in updates:
        by_statement.setdefault(stmt, []).append(params)
    matched = sum(conn.execute(stmt, rows).rowcount for stmt, rows in by_statement.items())
    return bool(matched == len(updates))


def _one_by_one(conn: sa.Connection, updates: list[Guarded]) -> list[bool]:
    # In the group's order: of two results for the same attempt only the first can match.
    return [conn.execute(stmt, params).rowcount == 1 for stmt, params in updates]


def run_guarded(session: Session, updates: list[Guarded]) -> list[bool]:
    """Run the UPDATEs in the session's transaction; per item, whether it matched. When one
    does not match (a lost lease, rare), the group is undone and run one by one."""
    multi_rowcount = session.get_bind().dialect.supports_sane_multi_rowcount
    if multi_rowcount and _together(session.connection(), updates):
        return [True] * len(updates)
    if multi_rowcount:
        session.rollback()
    return _one_by_one(session.connection(), updates)
