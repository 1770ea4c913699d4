"""Cost-aware routing reads traffic control's shared state in a real Redis: a router skips
a cheaper candidate whose circuit is open or that has no capacity, and comes back to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from promptq.catalog import parse_catalog
from promptq.config import Settings
from promptq.db import Database
from promptq.jobs import ClaimedJob
from promptq.scheduler.breaker import BreakerSettings, CircuitBreaker
from promptq.scheduler.deployments import limits_of
from promptq.scheduler.health import ModelHealth
from promptq.scheduler.rate_headers import RateSignal
from promptq.scheduler.rate_limit import RateLimiter
from promptq.workers.spending import Spending
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio

CATALOG = parse_catalog(
    {
        "models": [
            {
                "name": name,
                "backend": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "input_per_mtok": price,
                "output_per_mtok": 4 * price,
            }
            for name, price in (("small", 0.1), ("large", 3.0))
        ],
        "routers": [{"name": "auto", "candidates": ["small", "large"], "escalate_on": ["length"]}],
    }
)
SMALL = CATALOG["small"].all_deployments()[0]
# Opens at the first fault, for a short cooldown after which probes can close it again.
BREAKER = BreakerSettings(failure_threshold=1, cooldown_seconds=2, probes_to_close=2)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def spending(
    redis: aioredis.Redis, redis_server: RedisServer, db: Database
) -> AsyncIterator[Spending]:
    settings = Settings(redis_url=redis_server.url, database_url=str(db.engine.url))
    health = ModelHealth(RateLimiter(redis), CircuitBreaker(redis, BREAKER), fresh_seconds=0)
    spend = Spending(settings, CATALOG, db, health)
    yield spend
    await spend.close()


def _job() -> ClaimedJob:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    return ClaimedJob(
        id="job_1",
        tenant="acme",
        batch_id=None,
        model="auto",
        body=body,
        priority=5,
        attempt=1,
        max_attempts=3,
        owner="w",
    )


async def _served_first(spending: Spending) -> list[str]:
    return [entry.name for entry in (await spending.plan(_job())).chain]


async def test_an_open_breaker_on_the_cheap_model_routes_to_the_next_until_it_closes(
    spending: Spending, redis: aioredis.Redis
) -> None:
    # Given a router whose cheap model is healthy
    breaker = CircuitBreaker(redis, BREAKER)
    assert await _served_first(spending) == ["small", "large"]
    # When a worker's call to the cheap model fails and its circuit opens
    assert await breaker.record(str(SMALL.name), ok=False) == "open"
    # Then requests go to the next candidate
    assert await _served_first(spending) == ["large"]
    # When its cooldown is over and probes succeed, so the circuit closes again
    cooling = await breaker.allow(str(SMALL.name))
    await asyncio.sleep(cooling.wait)  # the cooldown is the time under test, not a race
    for _ in range(2):
        assert (await breaker.allow(str(SMALL.name))).probe
        await breaker.record(str(SMALL.name), ok=True)
    # Then requests go back to the cheapest
    assert await _served_first(spending) == ["small", "large"]


async def test_a_cheap_model_paused_after_a_429_is_skipped(
    spending: Spending, redis: aioredis.Redis
) -> None:
    # When the cheap model's deployment answers 429 with Retry-After: 30
    limiter = RateLimiter(redis)
    await limiter.observe(limits_of(SMALL), RateSignal(retry_after=30), limited=True)
    # Then it has no capacity now, and the next candidate serves
    assert await _served_first(spending) == ["large"]


async def test_with_every_candidate_unhealthy_the_cheapest_waits(
    spending: Spending, redis: aioredis.Redis
) -> None:
    # Given both models' circuits open
    breaker = CircuitBreaker(redis, BreakerSettings(failure_threshold=1, cooldown_seconds=60))
    for name in ("small", "large"):
        await breaker.record(str(CATALOG[name].all_deployments()[0].name), ok=False)
    # Then the cheapest fitting model is still first: its jobs wait for it
    assert await _served_first(spending) == ["small", "large"]
