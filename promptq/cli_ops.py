"""Operator commands: `promptq gc` and `promptq flower`, and the --metrics-port option;
registered by promptq.cli."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from promptq.config import Settings, get_settings

__all__ = ["MetricsPort", "flower", "gc", "serve_metrics"]

MetricsPort = Annotated[
    int | None,
    typer.Option(help="Serve Prometheus /metrics on this port (default PROMPTQ_METRICS_PORT)."),
]


def serve_metrics(settings: Settings, port: int | None) -> None:
    """Start this process's /metrics server if a port is given or configured."""
    port = settings.metrics_port if port is None else port
    if port:
        from promptq.metrics import MetricsServer

        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        MetricsServer(port, token=token).start()


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


def flower(
    port: Annotated[int, typer.Option(help="Flower's HTTP port.")] = 5555,
    address: Annotated[str, typer.Option(help="The address to listen on.")] = "0.0.0.0",
    basic_auth: Annotated[
        str | None,
        typer.Option(envvar="FLOWER_BASIC_AUTH", help="USER:PASSWORD for every page and API."),
    ] = None,
) -> None:
    """Run Flower on promptq's Celery app: each job is a task, queue depth counts every
    priority step, and every page (and /metrics) asks for the login."""
    from promptq.workers.flower import run_flower

    run_flower(get_settings(), port=port, address=address, basic_auth=basic_auth)
