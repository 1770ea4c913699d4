"""What a provider's answer says about its rate limits: ``Retry-After``, ``retry-after-ms``
and the ``x-ratelimit-*`` headers (OpenAI's names; Anthropic's are mapped onto them)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from promptq.retry import parse_retry_after

__all__ = ["RateSignal", "parse_duration", "read_rate_headers"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Anthropic's anthropic-ratelimit-* headers, by the OpenAI name they correspond to.
_ANTHROPIC = {
    "x-ratelimit-limit-requests": "anthropic-ratelimit-requests-limit",
    "x-ratelimit-remaining-requests": "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-limit-tokens": "anthropic-ratelimit-tokens-limit",
    "x-ratelimit-remaining-tokens": "anthropic-ratelimit-tokens-remaining",
}


def parse_duration(value: str | None) -> float | None:
    """Seconds from ``20ms``, ``1.5s``, ``6m0s``, ``1h2m`` or a bare number of seconds."""
    if not value:
        return None
    text = value.strip().lower()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RateSignal:
    """The rate-limit facts in one answer; None where the provider said nothing."""

    retry_after: float | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    def exhausted_for(self) -> float | None:
        """Seconds until capacity returns when a remaining count is 0, else None."""
        waits = [
            reset
            for remaining, reset in (
                (self.remaining_requests, self.reset_requests),
                (self.remaining_tokens, self.reset_tokens),
            )
            if remaining == 0 and reset
        ]
        return max(waits) if waits else None

    def pause_after_429(self, default: float) -> float:
        """How long a 429 pauses the deployment: Retry-After, else the resets, else `default`."""
        if self.retry_after is not None:
            return self.retry_after
        resets = [r for r in (self.reset_requests, self.reset_tokens) if r]
        return max(resets) if resets else default


_RATE_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")
_NONE = RateSignal()


def read_rate_headers(headers: Mapping[str, str]) -> RateSignal:
    """Read the rate-limit headers (case-insensitive mapping, as aiohttp and httpx give)."""
    # Most answers of a provider without limits carry none: one pass over a few names
    # instead of a dozen look-ups.
    if not any(name.lower().startswith(_RATE_HEADER_PREFIXES) for name in headers):
        return _NONE

    def get(name: str) -> str | None:
        value = headers.get(name)
        if value is None and name in _ANTHROPIC:
            value = headers.get(_ANTHROPIC[name])
        return value

    retry_ms = _int(headers.get("retry-after-ms"))
    retry_after = retry_ms / 1000 if retry_ms is not None else None
    if retry_after is None:
        retry_after = parse_retry_after(headers.get("retry-after"))
    return RateSignal(
        retry_after=retry_after,
        limit_requests=_int(get("x-ratelimit-limit-requests")),
        limit_tokens=_int(get("x-ratelimit-limit-tokens")),
        remaining_requests=_int(get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
        reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )
