"""Alembic environment: migrates the database named by PROMPTQ_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from promptq.config import get_settings
from promptq.db import create_sync_engine
from promptq.models import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.attributes.get("database_url") or get_settings().effective_database_url
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_sync_engine(url)
    with engine.connect() as conn:
        _migrate(conn)
    engine.dispose()


def _migrate(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite needs batch mode for ALTERs
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
