"""`promptq scheduler`: the sweeper, the webhook relay and retention as one long-running
process."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog

from promptq.catalog import load_catalog
from promptq.config import Settings
from promptq.db import Database
from promptq.retention import run_retention
from promptq.scheduler.relay import Relay
from promptq.scheduler.sweeper import Sweeper
from promptq.workers.celery_app import make_celery

__all__ = ["run_scheduler"]

log = structlog.get_logger(__name__)


async def run_scheduler(settings: Settings) -> None:
    """Sweep, relay webhooks and purge old rows until cancelled (SIGINT/SIGTERM end the process)."""
    db = Database.from_settings(settings, pool_size=4)
    redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    catalog = load_catalog(settings.models_file)
    sweeper = Sweeper(settings, db, make_celery(settings), redis, catalog)
    relay = Relay(settings, db)
    log.info("scheduler.started", interval=settings.sweep_interval_seconds)
    try:
        await asyncio.gather(
            sweeper.run_forever(), relay.run_forever(), run_retention(db, settings)
        )
    finally:
        await redis.aclose()
        await db.dispose()
