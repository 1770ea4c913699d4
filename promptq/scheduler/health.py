"""Whether a model can take a call now, read from traffic control's shared state in Redis:
a router skips a candidate whose deployments all have an open circuit or no capacity left
(paused after a 429, rate limit or concurrency used up). Read-only: asking changes no
breaker, bucket or slot.

A process keeps each answer for a moment (`fresh_seconds`), as traffic control trusts a
closed circuit for a moment: hundreds of routed jobs per second then cost a few Redis
round trips, not several each."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import structlog
from redis.exceptions import RedisError

from promptq.catalog import Deployment, ModelEntry
from promptq.scheduler.breaker import CircuitBreaker
from promptq.scheduler.deployments import limits_of
from promptq.scheduler.rate_limit import RateLimiter

__all__ = ["ModelHealth"]

log = structlog.get_logger(__name__)


class ModelHealth:
    """Health and capacity of models, over traffic control's breaker and limiter."""

    def __init__(
        self, limiter: RateLimiter, breaker: CircuitBreaker, *, fresh_seconds: float = 0.25
    ) -> None:
        self.limiter = limiter
        self.breaker = breaker
        self.fresh_seconds = fresh_seconds
        self._known: dict[str, tuple[float, bool]] = {}  # model -> (until, ready)

    async def ready(self, entry: ModelEntry) -> bool:
        """True when some deployment of `entry` has its circuit not open and capacity now
        (also when the shared state is out of reach: the call itself then decides)."""
        now = time.monotonic()
        known = self._known.get(entry.name)
        if known is not None and now < known[0]:
            return known[1]
        try:
            ready = await self._any_ready(entry.all_deployments())
        except RedisError:
            log.warning("health.redis_error", model=entry.name, exc_info=True)
            ready = True
        self._known[entry.name] = (now + self.fresh_seconds, ready)
        return ready

    async def ready_among(self, entries: Iterable[ModelEntry]) -> set[str]:
        """The names of `entries` that are ready now."""
        return {entry.name for entry in entries if await self.ready(entry)}

    async def _any_ready(self, deployments: Sequence[Deployment]) -> bool:
        if not deployments:  # not called through traffic control: nothing to judge by
            return True
        for deployment in deployments:
            if await self.breaker.is_open(str(deployment.name)):
                continue
            limits = limits_of(deployment)
            state = await self.limiter.state(limits)
            if self.limiter.spare(limits, state) > 0:
                return True
        return False
