"""Circuit breakers per deployment, shared by every worker through Redis.

closed -> open after `failure_threshold` consecutive failures, or when failures are at
least `failure_ratio` of `min_calls` or more calls in the current `window_seconds`.
open -> half_open once its cooldown passes; half_open lets `max_probes` calls through at
a time and closes after `probes_to_close` successes, or opens again with twice the
cooldown (up to `cooldown_max`) on a failure. A dead provider gets probes, not traffic.
Only provider faults count (5xx, timeouts, resets): a 429 is a rate limit, a 400 is the
request's fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from promptq.constants import BREAKER_PREFIX

__all__ = ["BreakerSettings", "CircuitBreaker", "Gate"]

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local f = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'probes', 'probe_ok',
  'probes_lapse', 'fails', 'win_ok', 'win_fail', 'win_start', 'cooldown')
local state = f[1] or 'closed'
local open_until = tonumber(f[2]) or 0
local probes = tonumber(f[3]) or 0
"""

# ARGV: max probes at once, seconds after which a probe's slot lapses.
# Returns {allowed 1/0, wait seconds (string), 'probe' or ''}.
_ALLOW = (
    _PRELUDE
    + """
if state == 'open' then
  if now < open_until then return {0, tostring(open_until - now), ''} end
  state, probes = 'half_open', 0
  redis.call('HSET', KEYS[1], 'state', state, 'probes', 0, 'probe_ok', 0)
end
if state == 'half_open' then
  if now > (tonumber(f[5]) or 0) then probes = 0 end
  if probes >= tonumber(ARGV[1]) then return {0, '0.25', ''} end
  redis.call('HSET', KEYS[1], 'probes', probes + 1,
    'probes_lapse', tostring(now + tonumber(ARGV[2])))
  return {1, '0', 'probe'}
end
return {1, '0', ''}
"""
)

# ARGV: ok 1/0, failure threshold, failure ratio, min calls, window seconds,
# cooldown base, cooldown max, probes to close. Returns the new state.
_RECORD = (
    _PRELUDE
    + """
local ok = ARGV[1] == '1'
local base, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local cooldown = tonumber(f[10]) or base
local function open(seconds)
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', tostring(now + seconds),
    'cooldown', tostring(seconds), 'fails', 0, 'win_ok', 0, 'win_fail', 0,
    'win_start', tostring(now))
  return 'open'
end
redis.call('EXPIRE', KEYS[1], 86400)
if state == 'open' then return state end
if state == 'half_open' then
  if not ok then return open(math.min(cap, cooldown * 2)) end
  local good = (tonumber(f[4]) or 0) + 1
  if good >= tonumber(ARGV[8]) then
    redis.call('DEL', KEYS[1])
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'probe_ok', good, 'probes', math.max(0, probes - 1))
  return state
end
local win_ok, win_fail = tonumber(f[7]) or 0, tonumber(f[8]) or 0
local win_start = tonumber(f[9]) or now
if now - win_start > tonumber(ARGV[5]) then win_ok, win_fail, win_start = 0, 0, now end
local fails = tonumber(f[6]) or 0
if ok then fails, win_ok = 0, win_ok + 1 else fails, win_fail = fails + 1, win_fail + 1 end
local calls = win_ok + win_fail
if not ok and (fails >= tonumber(ARGV[2]) or
    (calls >= tonumber(ARGV[4]) and win_fail / calls >= tonumber(ARGV[3]))) then
  return open(base)
end
redis.call('HSET', KEYS[1], 'fails', fails, 'win_ok', win_ok, 'win_fail', win_fail,
  'win_start', tostring(win_start))
return 'closed'
"""
)


@dataclass(frozen=True)
class BreakerSettings:
    """When a deployment's circuit opens, and how it recovers."""

    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window_seconds: float = 30.0
    cooldown_seconds: float = 2.0
    cooldown_max: float = 15.0
    max_probes: int = 1
    probes_to_close: int = 2
    probe_lapse_seconds: float = 120.0


@dataclass(frozen=True)
class Gate:
    """The breaker's answer for one call."""

    allowed: bool
    wait: float
    probe: bool


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CircuitBreaker:
    """The Redis side of the breakers; one per process."""

    def __init__(self, redis: aioredis.Redis, settings: BreakerSettings | None = None) -> None:
        self.redis = redis
        self.settings = settings or BreakerSettings()
        self._allow = redis.register_script(_ALLOW)
        self._record = redis.register_script(_RECORD)

    async def allow(self, key: str) -> Gate:
        """May a call go to deployment `key` now? If not, how long until it may."""
        s = self.settings
        args: list[str | int | float] = [s.max_probes, s.probe_lapse_seconds]
        allowed, wait, kind = await self._allow(keys=[BREAKER_PREFIX + key], args=args)
        return Gate(bool(int(allowed)), float(_text(wait)), _text(kind) == "probe")

    async def record(self, key: str, *, ok: bool) -> str:
        """Count a call's outcome (a provider fault is not ok); returns the new state."""
        s = self.settings
        args: list[str | int | float] = [
            1 if ok else 0,
            s.failure_threshold,
            s.failure_ratio,
            s.min_calls,
            s.window_seconds,
            s.cooldown_seconds,
            s.cooldown_max,
            s.probes_to_close,
        ]
        return _text(await self._record(keys=[BREAKER_PREFIX + key], args=args))

    async def state(self, key: str) -> str:
        """closed, open or half_open."""
        raw = await self.redis.hget(BREAKER_PREFIX + key, "state")
        return _text(raw) if raw is not None else "closed"

    async def is_open(self, key: str) -> bool:
        """True while calls to `key` are refused (open and cooling down)."""
        raw = await self.redis.hmget(BREAKER_PREFIX + key, ["state", "open_until"])
        if raw[0] is None or _text(raw[0]) != "open":
            return False
        (sec, usec) = await self.redis.time()
        return float(_text(raw[1])) > sec + usec / 1_000_000
