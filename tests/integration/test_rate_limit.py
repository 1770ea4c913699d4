"""Shared rate limits against a real Redis: atomic admission, pacing with a small burst,
token settlement, pauses from 429s, discovery, and interactive work before bulk."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from promptq.constants import RATE_WAIT_PREFIX, RATE_WAIT_SEEN_PREFIX
from promptq.scheduler.admission import AdmissionGate, WaitExpired
from promptq.scheduler.rate_headers import RateSignal, parse_duration, read_rate_headers
from promptq.scheduler.rate_limit import DeploymentLimits, RateLimiter, RateLimitSettings
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio
_names = itertools.count()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def _limits(**fields: int) -> DeploymentLimits:
    return DeploymentLimits(key=f"test-{next(_names)}", **fields)


async def _grants(limiter: RateLimiter, limits: DeploymentLimits, n: int, **kw: object) -> int:
    granted = 0
    for i in range(n):
        decision = await limiter.try_acquire(
            limits,
            int(kw.get("tokens", 1)),
            interactive=bool(kw.get("interactive", False)),
            slot_id=f"s{i}",
        )
        granted += decision.granted
    return granted


async def _redis_now(redis: aioredis.Redis) -> float:
    sec, usec = await redis.time()
    return sec + usec / 1_000_000


async def test_a_minute_limit_admits_only_a_short_burst_at_once(redis: aioredis.Redis) -> None:
    # Given 600 RPM (10/s, paced at 98%) with half a second of burst: a bucket of 5
    limiter = RateLimiter(redis, RateLimitSettings(burst_seconds=0.5, bulk_reserve=0))
    limits = _limits(rpm=600)
    # When 100 calls ask at once, then one more
    start = await _redis_now(redis)
    granted = await _grants(limiter, limits, 100)
    refill = (await _redis_now(redis) - start) * 10
    refused = await limiter.try_acquire(limits, 1, interactive=False, slot_id="x")
    # Then the bucket and its refill pass, not a minute's worth, and the refusal says how long
    assert 5 <= granted <= 5 + refill + 1
    assert not refused.granted and refused.reason == "rate_limited"
    assert 0 < refused.wait <= 0.11


async def test_two_limiters_share_one_bucket(redis: aioredis.Redis) -> None:
    # Given two processes' limiters on one deployment (a bucket of 5, 10/s)
    limits = _limits(rpm=600)
    settings = RateLimitSettings(burst_seconds=0.5, bulk_reserve=0)
    first, second = RateLimiter(redis, settings), RateLimiter(redis, settings)
    # When both ask 20 times
    start = await _redis_now(redis)
    total = await _grants(first, limits, 20) + await _grants(second, limits, 20)
    refill = (await _redis_now(redis) - start) * 10
    # Then together they get one bucket's worth, not two
    assert 5 <= total <= 5 + refill + 1


async def test_tokens_are_reserved_then_settled_with_real_usage(redis: aioredis.Redis) -> None:
    # Given 60,000 TPM with a 500-token bucket, and a call reserving 400
    limiter = RateLimiter(redis, RateLimitSettings(burst_seconds=0.5, bulk_reserve=0))
    limits = _limits(tpm=60_000)
    first = await limiter.try_acquire(limits, 400, interactive=False, slot_id="a")
    blocked = await limiter.try_acquire(limits, 400, interactive=False, slot_id="b")
    # When the first call reports it used only 50
    await limiter.settle(limits, "a", 400, 50)
    after = await limiter.try_acquire(limits, 400, interactive=False, slot_id="c")
    # Then the unused 350 came back and a second 400-token call fits
    assert first.granted and not blocked.granted and after.granted


async def test_concurrency_is_a_shared_slot_count(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, RateLimitSettings(bulk_reserve=0))
    limits = _limits(max_concurrency=3)
    assert await _grants(limiter, limits, 5) == 3
    await limiter.settle(limits, "s0", 1, 1)
    again = await limiter.try_acquire(limits, 1, interactive=False, slot_id="s9")
    assert again.granted
    state = await limiter.state(limits)
    assert state["in_flight"] == 3


async def test_a_429_pauses_the_deployment_for_everyone(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis)
    limits = _limits(rpm=600_000)
    pause = await limiter.observe(limits, RateSignal(retry_after=30), limited=True)
    decision = await limiter.try_acquire(limits, 1, interactive=True, slot_id="x")
    assert pause == 30
    assert not decision.granted and decision.reason == "rate_limited"
    assert 29 < decision.wait <= 30
    assert limiter.spare(limits, await limiter.state(limits)) == 0


async def test_undeclared_limits_are_learned_from_headers(redis: aioredis.Redis) -> None:
    # Given a deployment with no declared limits that answers with x-ratelimit headers
    limiter = RateLimiter(redis, RateLimitSettings(burst_seconds=0.5, bulk_reserve=0))
    limits = _limits()
    signal = read_rate_headers(
        {"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "1100"}
    )
    # When the answer is observed
    await limiter.observe(limits, signal, limited=False)
    # Then the limit applies from then on: a burst of 10 (half a second of 20/s)
    start = await _redis_now(redis)
    granted = await _grants(limiter, limits, 30)
    assert 10 <= granted <= 10 + (await _redis_now(redis) - start) * 20 + 1


async def test_aimd_halves_concurrency_on_429_and_grows_it_on_success(
    redis: aioredis.Redis,
) -> None:
    limiter = RateLimiter(redis, RateLimitSettings(adaptive_start=8))
    limits = _limits()
    await limiter.observe(limits, RateSignal(retry_after=0), limited=True)
    assert (await limiter.state(limits))["d_conc"] == 4
    await redis.hset(f"promptq:rl:{limits.key}", "d_conc_cut", 0)  # as if a second passed
    for _ in range(4):
        await limiter.observe(limits, RateSignal(), limited=False)
    # 4 -> 5 -> 5.8 -> 6.49 -> 7.11: +4/conc per success
    assert (await limiter.state(limits))["d_conc"] == pytest.approx(7.11, abs=0.01)
    # And a second 429 within the second does not cut again
    await limiter.observe(limits, RateSignal(retry_after=0), limited=True)
    await limiter.observe(limits, RateSignal(retry_after=0), limited=True)
    assert (await limiter.state(limits))["d_conc"] == pytest.approx(3.56, abs=0.01)


async def test_bulk_holds_back_a_reserve_that_interactive_may_use(redis: aioredis.Redis) -> None:
    # Given a bucket of 10 requests and a 20% interactive reserve
    limiter = RateLimiter(redis, RateLimitSettings(burst_seconds=0.5, bulk_reserve=0.2))
    limits = _limits(rpm=1200)
    # When bulk drains what it may, then interactive asks
    bulk = await _grants(limiter, limits, 10)
    interactive = await _grants(limiter, limits, 3, interactive=True)
    # Then bulk left about two requests that interactive got
    assert 8 <= bulk <= 9
    assert interactive >= 2


async def test_a_waiting_interactive_call_holds_bulk_back(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, RateLimitSettings(burst_seconds=0.5, bulk_reserve=0))
    limits = _limits(rpm=120)  # one request in the bucket, one per half second
    assert (await limiter.try_acquire(limits, 1, interactive=False, slot_id="a")).granted
    refused = await limiter.try_acquire(limits, 1, interactive=True, slot_id="i")
    bulk = await limiter.try_acquire(limits, 1, interactive=False, slot_id="b")
    assert not refused.granted and not bulk.granted
    assert bulk.wait >= refused.wait  # bulk may not take what frees up for interactive


async def test_the_gate_admits_interactive_waiters_before_bulk(redis: aioredis.Redis) -> None:
    # Given a gate on a slow deployment with bulk calls already waiting
    gate = AdmissionGate(RateLimiter(redis, RateLimitSettings(burst_seconds=0.5, bulk_reserve=0)))
    limits = _limits(rpm=600)  # 10/s, a bucket of 5
    order: list[str] = []
    five_served = asyncio.Event()

    async def call(name: str, band: int) -> None:
        permit = await gate.acquire(
            limits, 1, band=band, priority=0, slot_id=name, interactive=band == 0
        )
        order.append(name)
        if len(order) == 5:
            five_served.set()
        await gate.settle(permit, 1)

    bulk = [asyncio.create_task(call(f"bulk{i}", 5)) for i in range(12)]
    await five_served.wait()
    # When an interactive call arrives behind them
    await call("urgent", 0)
    # Then it goes before every bulk call still waiting
    assert order.index("urgent") <= 6
    await asyncio.gather(*bulk)
    assert len(order) == 13


async def test_a_waiter_reports_why_and_can_give_up(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis)
    gate = AdmissionGate(limiter)
    limits = _limits(rpm=600_000)
    await limiter.observe(limits, RateSignal(retry_after=60), limited=True)
    reasons: list[str] = []

    async def on_wait(reason: str) -> None:
        reasons.append(reason)

    with pytest.raises(WaitExpired):
        await gate.acquire(
            limits,
            1,
            band=5,
            priority=0,
            slot_id="w",
            interactive=False,
            on_wait=on_wait,
            report_after=0.05,
            max_wait=0.2,
        )
    assert reasons == ["rate_limited"]


class _Process:
    """One worker process's admission: its own Redis client, limiter and gate."""

    def __init__(self, url: str, order: list[str], burst_done: asyncio.Event) -> None:
        self.redis = aioredis.Redis.from_url(url)
        settings = RateLimitSettings(burst_seconds=0.5, bulk_reserve=0)
        self.gate = AdmissionGate(RateLimiter(self.redis, settings))
        self.order, self.burst_done = order, burst_done

    async def call(self, limits: DeploymentLimits, name: str, priority: int) -> None:
        permit = await self.gate.acquire(
            limits, 1, band=5, priority=priority, slot_id=name, interactive=False
        )
        self.order.append(name)
        if len(self.order) == 5:
            self.burst_done.set()
        await self.gate.settle(permit, 1)


async def _contend(
    redis_server: RedisServer, first: tuple[str, int], second: tuple[str, int]
) -> list[str]:
    """12 calls of process A (`first`: name prefix, priority) wait on a tight limit; once
    the bucket's first 5 went, 8 calls of process B (`second`) join. The grant order."""
    order: list[str] = []
    burst_done = asyncio.Event()
    a, b = (_Process(redis_server.url, order, burst_done) for _ in range(2))
    limits = _limits(rpm=600)  # 10/s, a bucket of 5
    calls = [asyncio.create_task(a.call(limits, f"{first[0]}{i}", first[1])) for i in range(12)]
    await burst_done.wait()
    calls += [asyncio.create_task(b.call(limits, f"{second[0]}{i}", second[1])) for i in range(8)]
    await asyncio.gather(*calls)
    for process in (a, b):
        await process.redis.aclose()
    return order


async def test_across_processes_a_lower_priority_number_is_admitted_first(
    redis_server: RedisServer,
) -> None:
    # Given process A's priority-5 calls waiting on a tight limit
    # When process B's priority-1 calls arrive behind them
    order = await _contend(redis_server, ("a", 5), ("b", 1))
    # Then B's calls take the capacity before A's still waiting (one of A's may have been
    # granted as B's arrived)
    last_b = max(i for i, name in enumerate(order) if name.startswith("b"))
    a_before_last_b = [n for n in order[5:last_b] if n.startswith("a")]
    assert len(a_before_last_b) <= 1, order
    assert len(order) == 20


async def test_across_processes_equal_priorities_are_admitted_in_arrival_order(
    redis_server: RedisServer,
) -> None:
    # Given process A's calls waiting on a tight limit
    # When process B's calls of the same priority arrive later
    order = await _contend(redis_server, ("a", 5), ("b", 5))
    # Then A's waiting calls go first (one of B's may slip in as it arrives)
    last_a = max(i for i, name in enumerate(order) if name.startswith("a"))
    b_before_last_a = [n for n in order[:last_a] if n.startswith("b")]
    assert len(b_before_last_a) <= 1, order


async def test_a_dead_process_place_in_the_waiting_room_lapses(redis: aioredis.Redis) -> None:
    # Given a waiting room where a process that died left a place ahead of everyone
    settings = RateLimitSettings(burst_seconds=0.5, bulk_reserve=0, room_ttl=1.0)
    gate = AdmissionGate(RateLimiter(redis, settings))
    limits = _limits(rpm=600)
    await redis.zadd(f"{RATE_WAIT_PREFIX}{limits.key}", {"dead-lane": 0})
    await redis.zadd(
        f"{RATE_WAIT_SEEN_PREFIX}{limits.key}", {"dead-lane": await _redis_now(redis) + 1}
    )
    # When a live process asks for capacity
    permit = await asyncio.wait_for(
        gate.acquire(limits, 1, band=5, priority=5, slot_id="live", interactive=False), 10
    )
    # Then it is served once the dead place lapsed, and it leaves no place behind
    await gate.settle(permit, 1)
    assert await redis.zcard(f"{RATE_WAIT_PREFIX}{limits.key}") == 0


def test_durations_and_headers_parse() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3s") == 3723
    assert parse_duration("soon") is None
    signal = read_rate_headers(
        {
            "retry-after-ms": "250",
            "retry-after": "9",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "2s",
        }
    )
    assert signal.retry_after == 0.25
    assert signal.exhausted_for() == 2
    assert RateSignal(reset_requests=3.0).pause_after_429(1.0) == 3.0
    assert RateSignal().pause_after_429(1.0) == 1.0
