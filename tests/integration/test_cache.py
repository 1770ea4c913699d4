"""The exact response cache against a real Redis: keys, hits, and single flight across
several cache clients (as several workers have)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from promptq.cache import CachedAnswer, Hit, Lead, ResponseCache, cache_key
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
ANSWER = CachedAnswer("hi", "stop", 3, 1, {"id": "chatcmpl-1"}, "job_1")


@pytest.fixture
async def caches(redis_server: RedisServer) -> AsyncIterator[list[ResponseCache]]:
    """Three caches with their own Redis clients, like three worker processes."""
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(3)]
    await clients[0].flushdb()
    yield [ResponseCache(client, lock_seconds=30) for client in clients]
    for client in clients:
        await client.aclose()


def test_the_key_names_tenant_model_and_what_changes_the_answer() -> None:
    base = cache_key("acme", "m", BODY)
    assert cache_key("acme", "m", dict(reversed(list(BODY.items())))) == base
    assert cache_key("acme", "m", {**BODY, "user": "u1", "stream": False, "cache": True}) == base
    assert cache_key("other-tenant", "m", BODY) != base
    assert cache_key("acme", "m2", BODY) != base
    assert cache_key("acme", "m", {**BODY, "temperature": 0.7}) != base
    assert cache_key("acme", "m", {**BODY, "max_tokens": 6}) != base


async def test_identical_requests_in_flight_make_one_leader(caches: list[ResponseCache]) -> None:
    # Given 30 identical requests spread over three processes
    key = cache_key("acme", "m", BODY)

    async def one(cache: ResponseCache) -> Hit | Lead:
        return await cache.lookup(key, max_wait=30)

    tasks = [asyncio.create_task(one(caches[i % 3])) for i in range(30)]
    # When the one that leads stores its answer
    leader: Lead | None = None
    while leader is None:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        leads = [t.result() for t in done if isinstance(t.result(), Lead)]
        assert len(leads) <= 1
        leader = leads[0] if leads else None  # type: ignore[assignment]
    owner = next(c for c in caches if leader.key in c._local)
    await owner.store(leader, ANSWER, ttl_seconds=60)
    results = await asyncio.gather(*tasks)

    # Then exactly one led and 29 got its answer
    assert sum(isinstance(r, Lead) for r in results) == 1
    hits = [r for r in results if isinstance(r, Hit)]
    assert len(hits) == 29 and all(h.answer == ANSWER for h in hits)
    # And a later request hits at once
    assert await caches[2].lookup(key, max_wait=1) == Hit(ANSWER)


async def test_a_failed_leader_hands_the_lead_to_a_waiter(caches: list[ResponseCache]) -> None:
    key = cache_key("acme", "m", {**BODY, "seed": 1})
    first = await caches[0].lookup(key, max_wait=5)
    assert isinstance(first, Lead)
    waiter = asyncio.create_task(caches[1].lookup(key, max_wait=30))
    await caches[0].abandon(first)
    second = await waiter
    assert isinstance(second, Lead) and second.token
    await caches[1].abandon(second)


async def test_entries_expire_after_their_ttl(caches: list[ResponseCache]) -> None:
    key = cache_key("acme", "m", {**BODY, "seed": 2})
    lead = await caches[0].lookup(key, max_wait=5)
    assert isinstance(lead, Lead)
    await caches[0].store(lead, ANSWER, ttl_seconds=60)
    ttl = await caches[0]._redis.ttl(f"promptq:cache:{key}")
    assert 0 < ttl <= 60


async def test_lookups_of_many_requests_at_once_survive_a_flushed_script_cache(
    caches: list[ResponseCache], redis_server: RedisServer
) -> None:
    # Given Redis forgot the cache's scripts (restarted, or SCRIPT FLUSH)
    client = aioredis.Redis.from_url(redis_server.url)
    await client.script_flush()
    await client.aclose()
    keys = [cache_key("acme", "m", {**BODY, "seed": 100 + i}) for i in range(20)]
    # When 20 different requests look up at once, and their leaders store answers
    leads = await asyncio.gather(*(caches[0].lookup(k, max_wait=5) for k in keys))
    await asyncio.gather(*(caches[0].store(lead, ANSWER, 60) for lead in leads))  # type: ignore[arg-type]
    # Then each led its own key, and each answer is there for the next request
    assert all(isinstance(lead, Lead) for lead in leads)
    assert [await caches[1].lookup(k, max_wait=1) for k in keys] == [Hit(ANSWER)] * 20
