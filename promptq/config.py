"""The one settings object: every knob is a `PROMPTQ_*` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings", "sqlalchemy_url"]


def _default_home() -> Path:
    return Path.home() / ".promptq"


class Settings(BaseSettings):
    """promptq's settings; defaults run everything on one machine (see `promptq demo`)."""

    model_config = SettingsConfigDict(env_prefix="PROMPTQ_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    home: Path = Field(default_factory=_default_home)
    database_url: str = ""  # empty: a SQLite file under `home`
    redis_url: str = "redis://127.0.0.1:6379/0"
    models_file: Path | None = None

    # Micro-batches: how many job ids one queue message names.
    chunk_size: int = Field(default=32, ge=1, le=1000)
    # Jobs: attempts, leases and the sweeper.
    max_attempts: int = Field(default=3, ge=1, le=100)
    lease_seconds: float = Field(default=300.0, gt=0)
    sweep_interval_seconds: float = Field(default=10.0, gt=0)
    requeue_after_seconds: float = Field(default=1800.0, gt=0)
    # Remote worker: provider calls.
    request_timeout_seconds: float = Field(default=120.0, gt=0)
    retry_base_seconds: float = Field(default=1.0, ge=0)
    retry_max_seconds: float = Field(default=60.0, ge=0)
    # Uploads.
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_file_lines: int = Field(default=100_000, gt=0)
    max_request_bytes: int = Field(default=2 * 1024 * 1024, gt=0)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql", "postgres://", "sqlite")):
            raise ValueError("PROMPTQ_DATABASE_URL must be a postgresql:// or sqlite:// URL")
        return value

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in `home`."""
        return self.database_url or f"sqlite:///{self.home / 'promptq.db'}"


def sqlalchemy_url(url: str, *, asynchronous: bool) -> str:
    """Pick the driver for a plain URL: psycopg for Postgres, aiosqlite or pysqlite for SQLite."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    base = scheme.split("+", 1)[0]
    if base in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}" if asynchronous else f"sqlite://{rest}"
    raise ValueError(f"unsupported database URL scheme: {scheme!r}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
