"""Per-deployment RPM/TPM/concurrency limits shared by every worker through Redis.

A call reserves one request and its worst-case tokens before it is sent (`try_acquire`,
one atomic Lua round trip), and gives back the tokens it did not use once the provider
reports usage (`settle`). Buckets refill per second and hold `burst_seconds` of capacity,
so a minute's limit is never sent at once. Bulk work admits only above a reserve of each
bucket, and not at all while an interactive request is waiting, so interactive jobs get
capacity first when a limit is the bottleneck; and a shared waiting room serves the
waiters of every process in (band, priority, arrival) order (`Place`). Answers feed
back through `observe`: a 429 pauses the deployment for every worker (Retry-After,
retry-after-ms or the x-ratelimit-reset-* times), and a deployment without declared
limits learns them from x-ratelimit-limit-* headers and adapts its concurrency (AIMD) on
429s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from promptq.constants import (
    RATE_LIMIT_PREFIX,
    RATE_SLOTS_PREFIX,
    RATE_WAIT_PREFIX,
    RATE_WAIT_SEEN_PREFIX,
)
from promptq.scheduler.rate_headers import RateSignal
from promptq.scheduler.rate_scripts import ADMIT, LEAVE_ROOM, OBSERVE, SETTLE

__all__ = ["Decision", "DeploymentLimits", "Place", "RateLimitSettings", "RateLimiter"]

# Arrival times in the waiting room's scores: milliseconds since 2020, below 1e13 until
# the 2300s, so (band * 10 + priority) * 1e13 + arrival stays an exact double.
_EPOCH = 1_577_836_800.0
_RANK = 10**13


@dataclass(frozen=True)
class Place:
    """A process's lane in a deployment's shared waiting room: its id, the score of its
    first waiter, and that of the waiter after it (None: none)."""

    lane: str
    score: int
    next_score: int | None

    @staticmethod
    def score_of(band: int, priority: int, arrival: float) -> int:
        """Lower goes first: by band, then priority, then arrival (unix time)."""
        return (band * 10 + priority) * _RANK + int((arrival - _EPOCH) * 1000)


@dataclass(frozen=True)
class DeploymentLimits:
    """A deployment's declared limits (None: not declared); `key` names it in Redis."""

    key: str
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None

    @property
    def adaptive(self) -> bool:
        """No limit declared: learn them from the provider's answers."""
        return self.rpm is None and self.tpm is None and self.max_concurrency is None


@dataclass(frozen=True)
class Decision:
    """One admission answer: granted, or how long to wait and why."""

    granted: bool
    wait: float
    reason: str  # "" when granted; rate_limited | concurrency


@dataclass(frozen=True)
class RateLimitSettings:
    """Tuning shared by all deployments (from the settings object)."""

    # Seconds of refill a bucket holds: less than the provider's, so network jitter in
    # arrival times does not meet an empty bucket at the provider.
    burst_seconds: float = 0.5
    # Pace at this fraction of a declared limit, a margin for clock and arrival jitter.
    margin: float = 0.98
    # Bulk work admits only while this fraction of each bucket stays for interactive work.
    bulk_reserve: float = 0.2
    # A slot of a request in flight lapses after this long (a worker died holding it).
    slot_ttl: float = 600.0
    # A process's lane in the waiting room lapses when not heard from for this long.
    room_ttl: float = 5.0
    # A 429 with no Retry-After and no reset headers pauses the deployment this long.
    default_pause: float = 1.0
    # Adaptive concurrency of a deployment with no declared limits: `adaptive_start` calls
    # in flight plus one per success until its first 429 (slow start), then half of what
    # was in flight, growing by 4/n per success (AIMD).
    adaptive_start: float = 8.0
    adaptive_max: float = 512.0


def _keys(limits: DeploymentLimits) -> list[str]:
    return [f"{RATE_LIMIT_PREFIX}{limits.key}", f"{RATE_SLOTS_PREFIX}{limits.key}"]


def _room(limits: DeploymentLimits) -> list[str]:
    return [f"{RATE_WAIT_PREFIX}{limits.key}", f"{RATE_WAIT_SEEN_PREFIX}{limits.key}"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RateLimiter:
    """The Redis side of rate limiting; one per process, shared by its coroutines."""

    def __init__(self, redis: aioredis.Redis, settings: RateLimitSettings | None = None) -> None:
        self.redis = redis
        self.settings = settings or RateLimitSettings()
        self._admit = redis.register_script(ADMIT)
        self._settle = redis.register_script(SETTLE)
        self._observe = redis.register_script(OBSERVE)
        self._leave_room = redis.register_script(LEAVE_ROOM)

    async def try_acquire(
        self,
        limits: DeploymentLimits,
        tokens: int,
        *,
        interactive: bool,
        slot_id: str,
        place: Place | None = None,
    ) -> Decision:
        """Reserve one request and `tokens` tokens now, or say how long to wait. With a
        `place`, a waiter of another process that comes first is served first."""
        s = self.settings
        args: list[str | int | float] = [
            tokens,
            1 if interactive else 0,
            limits.rpm or 0,
            limits.tpm or 0,
            limits.max_concurrency or 0,
            s.burst_seconds,
            s.bulk_reserve,
            slot_id,
            s.slot_ttl,
            s.margin,
            s.adaptive_start if limits.adaptive else 0,
            s.adaptive_max if limits.adaptive else 0,
            place.lane if place else "",
            place.score if place else 0,
            -1 if place is None or place.next_score is None else place.next_score,
            s.room_ttl,
        ]
        granted, wait, reason = await self._admit(keys=_keys(limits) + _room(limits), args=args)
        return Decision(bool(int(granted)), float(_text(wait)), _text(reason))

    async def leave_room(self, limits: DeploymentLimits, lane: str) -> None:
        """The lane has no waiter left: take it out of the deployment's waiting room."""
        await self._leave_room(keys=_room(limits), args=[lane])

    async def settle(
        self, limits: DeploymentLimits, slot_id: str, reserved: int, used: int | None
    ) -> None:
        """Free the call's slot and give back reserved tokens it did not use (`used` None:
        the call never reached the provider, so all of them)."""
        refund = reserved - (used if used is not None else 0)
        s = self.settings
        args: list[str | int | float] = [
            slot_id,
            refund,
            limits.tpm or 0,
            s.burst_seconds,
            s.margin,
            1 if used is not None else 0,
        ]
        await self._settle(keys=_keys(limits), args=args)

    async def observe(
        self, limits: DeploymentLimits, signal: RateSignal, *, limited: bool, in_flight: int = 0
    ) -> float:
        """Feed back one answer; returns how many seconds the deployment is now paused.
        `in_flight` tells a first 429 how many calls this process had out, if Redis did
        not count them (a slow start kept in the process)."""
        s = self.settings
        if limited:
            pause = signal.pause_after_429(s.default_pause)
        else:
            pause = signal.exhausted_for() or 0.0
        args: list[str | int | float] = [
            1 if limited else 0,
            pause,
            signal.limit_requests or 0,
            signal.limit_tokens or 0,
            1 if limits.adaptive else 0,
            s.adaptive_start,
            s.adaptive_max,
            in_flight,
        ]
        await self._observe(keys=_keys(limits), args=args)
        return pause

    async def state(self, limits: DeploymentLimits) -> dict[str, float]:
        """The deployment's raw state (for selection, metrics and tests)."""
        key, slots = _keys(limits)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.zcard(slots)
            pipe.time()
            raw, in_flight, (sec, usec) = await pipe.execute()
        state = {_text(k): float(_text(v)) for k, v in raw.items()}
        state["in_flight"] = float(in_flight)
        state["now"] = sec + usec / 1_000_000
        return state

    def spare(self, limits: DeploymentLimits, state: dict[str, float]) -> float:
        """The fraction of the deployment's capacity free now (0 paused .. 1 idle)."""
        now = state["now"]
        if now < state.get("paused_until", 0.0):
            return 0.0
        fractions = [1.0]
        for per_minute, level, at in (
            (limits.rpm or state.get("d_rpm"), "req", "req_at"),
            (limits.tpm or state.get("d_tpm"), "tok", "tok_at"),
        ):
            if per_minute and level in state:
                rate = per_minute * self.settings.margin / 60
                cap = max(1.0, per_minute / 60 * self.settings.burst_seconds)
                current = min(cap, state[level] + max(0.0, now - state[at]) * rate)
                fractions.append(max(0.0, current / cap))
        conc = limits.max_concurrency or state.get("d_conc")
        if conc:
            fractions.append(max(0.0, 1 - state["in_flight"] / conc))
        return min(fractions)
