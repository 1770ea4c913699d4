"""Database engines and sessions: async for the API and workers, sync for migrations."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from promptq.config import Settings, sqlalchemy_url

__all__ = ["MAX_JSON_DEPTH", "Database", "create_sync_engine", "unstorable"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Several processes share the demo's SQLite file: WAL lets readers run beside
    # one writer, and the busy timeout makes writers wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_sync_engine(url: str) -> sa.Engine:
    """A synchronous engine (migrations, CLI), with the right driver for a plain URL."""
    engine = sa.create_engine(sqlalchemy_url(url, asynchronous=False), pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# How deeply a stored JSON value may nest; real requests, response_format schemas
# included, stay far below, while JSON encoders and pydantic fail a few hundred levels down.
MAX_JSON_DEPTH = 64


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate (\\ud800-\\udfff)"
    return None


def unstorable(value: object, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """Where a JSON value holds what promptq cannot store (a NUL character, an unpaired
    surrogate, NaN, an infinity, or nesting past `max_depth`), and what, e.g.
    `("messages.0.content", "a NUL character (\\u0000)")`; None if it has none."""
    pending: deque[tuple[str, object, int]] = deque([("", value, 0)])
    while pending:  # iterative: a deeply nested value must not exhaust the stack
        path, item, depth = pending.popleft()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return path, problem
        elif isinstance(item, float) and not math.isfinite(item):
            return path, "a number that is NaN or infinite"
        elif isinstance(item, dict | list | tuple) and depth >= max_depth:
            return path, f"values nested more than {max_depth} levels deep"
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _text_problem(str(key))
                if problem:
                    return path, f"a key with {problem}"
                pending.append((f"{path}.{key}" if path else str(key), child, depth + 1))
        elif isinstance(item, list | tuple):
            pending.extend(
                (f"{path}.{i}" if path else str(i), child, depth + 1)
                for i, child in enumerate(item)
            )
    return None


class Database:
    """The async engine and session factory of one process."""

    def __init__(self, url: str, *, pool_size: int = 10, pool_timeout: float = 30.0) -> None:
        async_url = sqlalchemy_url(url, asynchronous=True)
        options: dict[str, Any] = {"pool_pre_ping": True}
        if not async_url.startswith("sqlite"):
            # A checkout waits at most `pool_timeout` for a free connection, then raises
            # sqlalchemy.exc.TimeoutError (the API answers 503 database_busy).
            options.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout)
        self.engine: AsyncEngine = create_async_engine(async_url, **options)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int | None = None) -> Database:
        """The database the settings name; `db_pool_size` connections (and as many again
        in overflow) unless `pool_size` says otherwise."""
        return cls(
            settings.effective_database_url,
            pool_size=pool_size or settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout_seconds,
        )

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite file (no SKIP LOCKED, one writer)."""
        return self.engine.dialect.name == "sqlite"

    def session(self) -> AsyncSession:
        """A new session; use it as an async context manager."""
        return self.sessions()

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
