"""Operator commands: `promptq gc` (and `promptq flower`); registered by promptq.cli."""

from __future__ import annotations

import asyncio

import typer

from promptq.config import get_settings

__all__ = ["gc"]


def gc() -> None:
    """Purge what the retention settings let go (finished batches and jobs, old files,
    delivered webhook events), in short chunks; the usage ledger is kept."""
    from promptq.db import Database
    from promptq.retention import purge

    async def _purge() -> dict[str, int]:
        settings = get_settings()
        db = Database.from_settings(settings, pool_size=2)
        try:
            return await purge(db, settings)
        finally:
            await db.dispose()

    purged = asyncio.run(_purge())
    if not purged:
        typer.echo("nothing to purge")
    for table, count in purged.items():
        typer.echo(f"{table}: {count} purged")
