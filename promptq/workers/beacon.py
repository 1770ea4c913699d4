"""Each worker's heartbeat record in Redis: its kind, owner, counters and last beat, with a
time to live, so `promptq worker <kind> --check` (a container health check) can tell
whether a worker of that kind is alive without asking Postgres or the worker itself."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from promptq.constants import WORKER_BEAT_PREFIX, worker_beat_key

__all__ = ["beat", "forget", "live_workers"]


async def beat(
    client: aioredis.Redis, kind: str, owner: str, snapshot: dict[str, Any], ttl: float
) -> None:
    """Record that `owner` is alive now, with what it reports; gone after `ttl` seconds."""
    record = {"kind": kind, "owner": owner, "beat_at": time.time(), **snapshot}
    await client.set(worker_beat_key(kind, owner), json.dumps(record), ex=math.ceil(ttl))


async def forget(client: aioredis.Redis, kind: str, owner: str) -> None:
    """Remove the record of a worker that stops cleanly."""
    await client.delete(worker_beat_key(kind, owner))


def live_workers(client: redis.Redis, kind: str, max_age: float) -> list[dict[str, Any]]:
    """The records of workers of `kind` that beat within the last `max_age` seconds."""
    keys = list(client.scan_iter(match=f"{WORKER_BEAT_PREFIX}{kind}:*", count=1000))
    now = time.time()
    alive = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:  # expired between SCAN and MGET
            continue
        record: dict[str, Any] = json.loads(raw)
        if now - float(record.get("beat_at", 0)) <= max_age:
            alive.append(record)
    return alive
