"""Integration tests: promptq's modules against a real Postgres database of their own (no
worker or scheduler process touches it), emptied before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa

from promptq.db import Database
from promptq.models import Base
from tests.stack import create_database, drop_database


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def integration_pg_url() -> Iterator[str]:
    url = create_database("promptq_int")
    yield url
    drop_database(url)


@pytest.fixture
async def db(integration_pg_url: str) -> AsyncIterator[Database]:
    """A migrated database with empty tables."""
    database = Database(integration_pg_url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    async with database.engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {tables} CASCADE"))
    yield database
    await database.dispose()
