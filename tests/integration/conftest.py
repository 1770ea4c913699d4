"""Integration tests: promptq's modules against the session's real Postgres, no workers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from promptq.db import Database
from promptq.models import Base


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    """The session database, emptied of jobs, batches and files before the test."""
    database = Database(pg_url)
    # api_keys stay: the acceptance tests hold session-wide keys.
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name != "api_keys")
    async with database.engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {tables} CASCADE"))
    yield database
    await database.dispose()
