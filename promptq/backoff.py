"""How long to wait before the next attempt: exponential backoff with full jitter, or the
provider's Retry-After when it gave one."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from promptq.errors import RateLimited, RetryableError

__all__ = ["backoff_delay", "parse_retry_after"]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_delay(
    attempt: int,
    error: RetryableError,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry number `attempt` (1 = the first retry)."""
    if isinstance(error, RateLimited) and error.retry_after is not None:
        # Honour the provider, with a little jitter so waiting workers do not stampede.
        return min(cap, error.retry_after) * (1 + 0.1 * (rng or random).random())
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)
