"""`promptq scheduler`: the sweeper as a long-running process."""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog

from promptq.config import Settings
from promptq.db import Database
from promptq.scheduler.sweeper import Sweeper
from promptq.workers.celery_app import make_celery

__all__ = ["run_scheduler"]

log = structlog.get_logger(__name__)


async def run_scheduler(settings: Settings) -> None:
    """Sweep until cancelled (SIGINT/SIGTERM end the process)."""
    db = Database.from_settings(settings, pool_size=2)
    redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    sweeper = Sweeper(settings, db, make_celery(settings), redis)
    log.info("scheduler.started", interval=settings.sweep_interval_seconds)
    try:
        await sweeper.run_forever()
    finally:
        await redis.aclose()
        await db.dispose()
