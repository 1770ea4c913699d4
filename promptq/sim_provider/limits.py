"""Enforced rate limits: per-second token buckets for requests and tokens, and the
``x-ratelimit-*`` headers a real provider sends with every answer.

A limit of N per minute refills N/60 per second into a bucket holding `burst_seconds` of
refill (at least one request), as providers enforce per-minute limits over short periods:
a minute's capacity sent at once is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from promptq.sim_provider.errors import SimError

__all__ = ["Bucket", "RateLimits", "format_duration"]

Clock = Callable[[], float]


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes x-ratelimit-reset-*: ``120ms``, ``1.5s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s"


class Bucket:
    """A token bucket: `per_minute` refilled continuously, holding `burst_seconds` of it."""

    def __init__(self, per_minute: int, burst_seconds: float, clock: Clock) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self._clock = clock
        self._level = self.capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits (0 when it fits now)."""
        self._refill()
        # A request larger than the bucket may pass once the bucket is full.
        needed = min(amount, self.capacity) - self._level
        return max(0.0, needed / self.rate)

    def take(self, amount: float) -> None:
        self._refill()
        self._level -= amount

    def remaining(self) -> int:
        """What is left, scaled to the per-minute limit as providers report it."""
        self._refill()
        return max(0, int(self._level / self.capacity * self.per_minute))

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        self._refill()
        return max(0.0, (self.capacity - self._level) / self.rate)


@dataclass
class RateLimits:
    """The provider's enforced limits; None means unlimited."""

    requests: Bucket | None = None
    tokens: Bucket | None = None

    @classmethod
    def build(
        cls, rpm: int | None, tpm: int | None, burst_seconds: float, clock: Clock = time.monotonic
    ) -> RateLimits:
        return cls(
            Bucket(rpm, burst_seconds, clock) if rpm else None,
            Bucket(tpm, burst_seconds, clock) if tpm else None,
        )

    def admit(self, tokens: int) -> None:
        """Take one request and `tokens` tokens, or raise a 429 with the wait in Retry-After."""
        waits = {
            "requests": self.requests.wait_for(1) if self.requests else 0.0,
            "tokens": self.tokens.wait_for(tokens) if self.tokens else 0.0,
        }
        kind, wait = max(waits.items(), key=lambda item: item[1])
        if wait > 0:
            limit = self.requests if kind == "requests" else self.tokens
            assert limit is not None
            raise SimError(
                429,
                f"Rate limit reached for {kind} per min (RPM/TPM): Limit {limit.per_minute}. "
                f"Please try again in {format_duration(wait)}. (simulated provider)",
                retry_after=wait,
                kind=kind,
            )
        if self.requests:
            self.requests.take(1)
        if self.tokens:
            self.tokens.take(tokens)

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of the current state."""
        out: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(bucket.per_minute)
            out[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
            out[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.reset_after())
        return out
