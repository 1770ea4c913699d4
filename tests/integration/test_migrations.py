"""The migrations make exactly the models' schema, and go down again."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from promptq.db import create_sync_engine
from promptq.migrate import downgrade, upgrade
from promptq.models import Base
from tests.stack import PG_ADMIN_URL


@pytest.fixture
def empty_db() -> Iterator[str]:
    name = f"promptq_mig_{secrets.token_hex(4)}"
    admin = create_sync_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _diff(url: str) -> list[object]:
    engine = create_sync_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return list(diff)


def _tables(url: str) -> set[str]:
    engine = create_sync_engine(url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    return names


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrade_head_gives_the_models_schema_and_downgrade_removes_it(
    backend: str, empty_db: str, tmp_path: object
) -> None:
    url = empty_db if backend == "postgresql" else f"sqlite:///{tmp_path}/promptq.db"
    upgrade(url)
    assert _diff(url) == []
    assert set(Base.metadata.tables) <= _tables(url)
    downgrade(url, "base")
    assert _tables(url) <= {"alembic_version"}
