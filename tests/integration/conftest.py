"""Integration tests: promptq's modules against a real Postgres database of their own (no
worker or scheduler process touches it), emptied before each test, or a fresh SQLite file
(the demo's database)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from promptq.db import Database
from promptq.migrate import upgrade
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


async def _emptied_postgres(url: str) -> Database:
    database = Database(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    async with database.engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {tables} CASCADE"))
    return database


@pytest.fixture
async def db(integration_pg_url: str) -> AsyncIterator[Database]:
    """A migrated database with empty tables."""
    database = await _emptied_postgres(integration_pg_url)
    yield database
    await database.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_db(
    request: pytest.FixtureRequest, integration_pg_url: str, tmp_path: Path
) -> AsyncIterator[Database]:
    """The integration Postgres database (emptied), or a fresh migrated SQLite file."""
    if request.param == "postgresql":
        database = await _emptied_postgres(integration_pg_url)
    else:
        url = f"sqlite:///{tmp_path}/promptq.db"
        upgrade(url)
        database = Database(url)
    yield database
    await database.dispose()
