"""Run Alembic migrations from code (`promptq db upgrade`, tests, the demo)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command

__all__ = ["alembic_config", "downgrade", "upgrade"]

_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the repository's migrations and the given database."""
    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database up to `revision`."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Take the database down to `revision`."""
    command.downgrade(alembic_config(database_url), revision)
