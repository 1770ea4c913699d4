"""Bulk row writes: Postgres `COPY ... FROM STDIN` on the session's own connection (in its
transaction), a plain executemany INSERT elsewhere (SQLite in tests and the embedded demo)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["copy_rows"]


def _json_positions(table: sa.Table, columns: Sequence[str]) -> list[int]:
    # COPY sends text: a JSON column's value goes as JSON, the rest as psycopg dumps it.
    return [i for i, c in enumerate(columns) if isinstance(table.c[c].type, sa.JSON)]


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
    json_at = _json_positions(table, columns)
    count = 0
    async with (
        driver.cursor() as cursor,
        cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy,
    ):
        for row in rows:
            if json_at:
                values = list(row)
                for i in json_at:
                    if values[i] is not None:
                        values[i] = Jsonb(values[i])
                row = values
            await copy.write_row(row)
            count += 1
    return count
