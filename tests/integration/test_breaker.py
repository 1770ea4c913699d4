"""Circuit breakers shared through a real Redis: open on failures, probe, close."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from promptq.scheduler.breaker import BreakerSettings, CircuitBreaker
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio
_names = itertools.count()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def _key() -> str:
    return f"breaker-test-{next(_names)}"


async def test_consecutive_failures_open_the_circuit_for_every_worker(
    redis: aioredis.Redis,
) -> None:
    # Given two processes' breakers on one deployment
    settings = BreakerSettings(failure_threshold=3, cooldown_seconds=60)
    one, other = CircuitBreaker(redis, settings), CircuitBreaker(redis, settings)
    key = _key()
    # When three calls in a row fail, reported by either
    await one.record(key, ok=False)
    await other.record(key, ok=False)
    state = await one.record(key, ok=False)
    gate = await other.allow(key)
    # Then the circuit is open for both, for the cooldown
    assert state == "open" and await other.is_open(key)
    assert not gate.allowed and 59 < gate.wait <= 60


async def test_a_success_resets_the_consecutive_count(redis: aioredis.Redis) -> None:
    breaker = CircuitBreaker(redis, BreakerSettings(failure_threshold=3, min_calls=100))
    key = _key()
    for ok in (False, False, True, False, False):
        state = await breaker.record(key, ok=ok)
    assert state == "closed" and (await breaker.allow(key)).allowed


async def test_a_failure_ratio_opens_it_too(redis: aioredis.Redis) -> None:
    breaker = CircuitBreaker(
        redis, BreakerSettings(failure_threshold=100, failure_ratio=0.5, min_calls=10)
    )
    key = _key()
    states = [await breaker.record(key, ok=i % 2 == 0) for i in range(10)]
    assert states[:-1] == ["closed"] * 9 and states[-1] == "open"


async def test_half_open_lets_one_probe_through_and_closes_after_successes(
    redis: aioredis.Redis,
) -> None:
    # Given an open circuit whose cooldown has passed
    settings = BreakerSettings(failure_threshold=1, cooldown_seconds=0, probes_to_close=2)
    breaker = CircuitBreaker(redis, settings)
    key = _key()
    await breaker.record(key, ok=False)
    # When calls ask to go through
    probe, second = await breaker.allow(key), await breaker.allow(key)
    # Then one probe goes, the rest wait; two good probes close the circuit
    assert probe.allowed and probe.probe
    assert not second.allowed
    assert await breaker.record(key, ok=True) == "half_open"
    assert (await breaker.allow(key)).probe
    assert await breaker.record(key, ok=True) == "closed"
    gate = await breaker.allow(key)
    assert gate.allowed and not gate.probe


async def test_a_failed_probe_opens_it_again_for_longer(redis: aioredis.Redis) -> None:
    settings = BreakerSettings(failure_threshold=1, cooldown_seconds=0.001, cooldown_max=60)
    breaker = CircuitBreaker(redis, settings)
    key = _key()
    await breaker.record(key, ok=False)
    while not (gate := await breaker.allow(key)).allowed:
        assert gate.wait <= 0.001
    assert await breaker.record(key, ok=False) == "open"
    cooldown = float(await redis.hget(f"promptq:cb:{key}", "cooldown") or 0)
    assert cooldown == pytest.approx(0.002)
