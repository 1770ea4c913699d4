"""The in-process slow start of a deployment with no declared limits admits in (band,
priority, arrival) order and keeps a reserve of its cap for interactive calls."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from promptq.scheduler.admission import AdmissionGate, Permit
from promptq.scheduler.rate_limit import DeploymentLimits, RateLimiter, RateLimitSettings

LIMITS = DeploymentLimits(key="undeclared")


def _gate() -> AdmissionGate:
    # No call reaches Redis: the slow start lives in the process.
    limiter = RateLimiter(aioredis.Redis(), RateLimitSettings(bulk_reserve=0.2))
    return AdmissionGate(limiter)


async def _enter(gate: AdmissionGate, priority: int, interactive: bool = False) -> Permit:
    band = 0 if interactive else 5
    permit = await gate.acquire_local(
        LIMITS, 5, 512, band=band, priority=priority, interactive=interactive
    )
    assert permit is not None
    return permit


def test_interactive_calls_use_the_reserve_and_lower_priorities_go_first() -> None:
    async def scenario() -> None:
        # Given a slow start of 5 calls, 4 of them (80%) for bulk, all 4 taken
        gate = _gate()
        running = [await _enter(gate, 5) for _ in range(4)]
        # When a priority-5 bulk call, then a priority-1 one, then an interactive one come
        late = asyncio.create_task(_enter(gate, 5))
        urgent_bulk = asyncio.create_task(_enter(gate, 1))
        interactive = await asyncio.wait_for(_enter(gate, 5, interactive=True), 1)
        await asyncio.sleep(0)
        # Then the interactive call went at once, on the reserve; bulk waits
        assert interactive.local and not late.done() and not urgent_bulk.done()
        # And when two bulk calls end (failing: the cap stays), the priority-1 call goes
        # first, though it came later
        for permit in running[:2]:
            await gate.settle(permit, None)
        await asyncio.wait_for(urgent_bulk, 1)
        assert not late.done()
        await gate.settle(running[2], None)
        await asyncio.wait_for(late, 1)

    asyncio.run(scenario())
