"""Bulk row writes: Postgres `COPY ... FROM STDIN` on the session's own connection (in its
transaction), a plain executemany INSERT elsewhere (SQLite in tests and the embedded demo)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["copy_rows"]


def _adapt(value: Any) -> Any:
    # COPY sends text: a JSON column's dict or list goes as JSON, the rest as psycopg dumps it.
    return Jsonb(value) if isinstance(value, dict | list) else value


async def copy_rows(
    session: AsyncSession, table: sa.Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Write `rows` (values in the order of `columns`) into `table`; returns how many."""
    conn = await session.connection()
    if conn.dialect.name != "postgresql":
        params = [dict(zip(columns, row, strict=True)) for row in rows]
        if params:
            await session.execute(sa.insert(table), params)
        return len(params)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection  # psycopg.AsyncConnection
    names = ", ".join(f'"{c}"' for c in columns)
    count = 0
    async with (
        driver.cursor() as cursor,
        cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy,
    ):
        for row in rows:
            await copy.write_row([_adapt(v) for v in row])
            count += 1
    return count
