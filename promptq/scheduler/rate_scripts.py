"""The Lua scripts behind shared rate limits: each decision is one atomic round trip to
Redis, on Redis's own clock, so every worker process and host sees the same buckets.

State per deployment (hash ``promptq:rl:<deployment>``): ``req``/``req_at`` and
``tok``/``tok_at`` (bucket levels and when they were last refilled), ``paused_until``,
``hot_until`` (an interactive request is waiting: bulk holds back), and the discovered
``d_rpm``/``d_tpm``/``d_conc`` used when the models file declares no limits. Requests in
flight are a sorted set of slot ids scored by expiry, so a dead worker's slots lapse.

The waiting room (``promptq:rl-wait:<deployment>``) orders waiters across processes: each
process's lane is scored by its first waiter's (band, priority, arrival), and a lane is
admitted only when no other lane's first waiter comes before its own; a lane not heard
from for a few seconds (its process died) lapses (``promptq:rl-wait-seen:<deployment>``).
"""

from __future__ import annotations

__all__ = ["ADMIT", "LEAVE_ROOM", "OBSERVE", "SETTLE"]

# Shared by the scripts: the clock and continuous refill of a bucket holding `burst`
# seconds of a per-minute limit, paced at `margin` of it.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function bucket(per_minute, burst, margin, cur, at)
  local rate = per_minute * margin / 60
  local cap = math.max(1, per_minute / 60 * burst)
  if cur == nil or at == nil then return rate, cap, cap end
  return rate, cap, math.min(cap, cur + math.max(0, now - at) * rate)
end
local function pick(declared, discovered)
  if declared > 0 then return declared end
  return tonumber(discovered) or 0
end
"""

#: KEYS: state, slots, waiting room, room lapse times. ARGV: tokens, interactive (1/0),
#: rpm, tpm, max_concurrency (0 for undeclared), burst seconds, bulk reserve fraction, slot
#: id, slot ttl, pacing margin, for a deployment with no declared limit the AIMD start and
#: ceiling (else 0, 0); then the caller's lane ("" for none), its score, the score of its
#: next waiter once this one is granted (-1: none), and how long a lane lasts unheard.
#: Returns {granted (1/0), wait seconds (string), reason}.
ADMIT = (
    _PRELUDE
    + """
local lane = ARGV[13]
local queued_behind = false
if lane ~= '' then
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  for _, gone in ipairs(lapsed) do
    redis.call('ZREM', KEYS[3], gone)
    redis.call('ZREM', KEYS[4], gone)
  end
  local mine = tonumber(ARGV[14])
  redis.call('ZADD', KEYS[3], ARGV[14], lane)
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[16]), lane)
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  queued_behind = first[1] ~= lane and tonumber(first[2]) < mine
end
local tokens = tonumber(ARGV[1])
local interactive = ARGV[2] == '1'
local burst, margin = tonumber(ARGV[6]), tonumber(ARGV[10])
local reserve = 0
if not interactive then reserve = tonumber(ARGV[7]) end
local f = redis.call('HMGET', KEYS[1], 'paused_until', 'd_rpm', 'd_tpm', 'd_conc',
  'req', 'req_at', 'tok', 'tok_at', 'hot_until', 'd_ok')
local paused = tonumber(f[1]) or 0
if now < paused then return {0, tostring(paused - now), 'rate_limited'} end
local hot = tonumber(f[9]) or 0
if not interactive and now < hot then return {0, tostring(hot - now), 'rate_limited'} end
local function refuse(wait, reason)
  if interactive then
    redis.call('HSET', KEYS[1], 'hot_until', tostring(math.max(hot, now + wait + 0.05)))
  end
  return {0, tostring(wait), reason}
end
local conc = math.floor(pick(tonumber(ARGV[5]), f[4]))
if conc == 0 and tonumber(ARGV[11]) > 0 and not f[2] and not f[3] then
  -- Undeclared limits, none learned, no 429 yet: slow start, one more call in flight per
  -- success.
  conc = math.floor(math.min(tonumber(ARGV[12]), tonumber(ARGV[11]) + (tonumber(f[10]) or 0)))
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if conc > 0 then
  local limit = conc
  if not interactive then limit = math.max(1, math.floor(conc * (1 - reserve))) end
  if redis.call('ZCARD', KEYS[2]) >= limit then return refuse(0.05, 'concurrency') end
end
local rpm, tpm = pick(tonumber(ARGV[3]), f[2]), pick(tonumber(ARGV[4]), f[3])
local wait, req_level, tok_level = 0, nil, nil
if rpm > 0 then
  local rate, cap, level = bucket(rpm, burst, margin, tonumber(f[5]), tonumber(f[6]))
  local need = 1 + reserve * (cap - 1)
  if level < need then wait = math.max(wait, (need - level) / rate) end
  req_level = level
end
if tpm > 0 then
  local rate, cap, level = bucket(tpm, burst, margin, tonumber(f[7]), tonumber(f[8]))
  local amount = math.min(tokens, cap)
  local need = amount + reserve * (cap - amount)
  if level < need then wait = math.max(wait, (need - level) / rate) end
  tok_level = level
end
if wait > 0 then return refuse(wait, 'rate_limited') end
-- Capacity is there, but another process's waiter comes first: it takes it.
if queued_behind then return refuse(0.01, 'rate_limited') end
if lane ~= '' then
  if ARGV[15] == '-1' then
    redis.call('ZREM', KEYS[3], lane)
    redis.call('ZREM', KEYS[4], lane)
  else
    redis.call('ZADD', KEYS[3], ARGV[15], lane)
  end
  redis.call('EXPIRE', KEYS[3], 86400)
  redis.call('EXPIRE', KEYS[4], 86400)
end
if req_level then
  redis.call('HSET', KEYS[1], 'req', tostring(req_level - 1), 'req_at', tostring(now))
end
if tok_level then
  redis.call('HSET', KEYS[1], 'tok', tostring(tok_level - tokens), 'tok_at', tostring(now))
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[9]), ARGV[8])
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('EXPIRE', KEYS[2], 86400)
return {1, '0', ''}
"""
)

#: KEYS: state, slots. ARGV: slot id, tokens to give back (reserved - used; may be
#: negative), tpm (0 for undeclared), burst seconds, pacing margin, succeeded (1/0).
SETTLE = (
    _PRELUDE
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
local refund = tonumber(ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'd_tpm', 'tok', 'tok_at', 'd_conc')
if ARGV[6] == '1' and not f[4] then redis.call('HINCRBY', KEYS[1], 'd_ok', 1) end
local tpm = pick(tonumber(ARGV[3]), f[1])
if tpm > 0 and refund ~= 0 and f[2] then
  local rate, cap, level = bucket(tpm, tonumber(ARGV[4]), tonumber(ARGV[5]),
    tonumber(f[2]), tonumber(f[3]))
  redis.call('HSET', KEYS[1], 'tok', tostring(math.min(cap, level + refund)),
    'tok_at', tostring(now))
end
return 1
"""
)

#: KEYS: state, slots. ARGV: rate limited (1/0), pause seconds (0: none), the limits the answer
#: reported (0: unknown), adaptive (1 when the models file declares no limit), AIMD
#: concurrency start and ceiling, calls in flight that Redis did not admit. Returns the
#: paused-until time (string).
OBSERVE = (
    _PRELUDE
    + """
local limited, pause = ARGV[1] == '1', tonumber(ARGV[2])
local adaptive = ARGV[5] == '1'
local f = redis.call('HMGET', KEYS[1], 'paused_until', 'd_conc', 'd_conc_cut')
local paused = tonumber(f[1]) or 0
if pause > 0 and now + pause > paused then
  paused = now + pause
  redis.call('HSET', KEYS[1], 'paused_until', tostring(paused))
end
if tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[1], 'd_rpm', ARGV[3]) end
if tonumber(ARGV[4]) > 0 then redis.call('HSET', KEYS[1], 'd_tpm', ARGV[4]) end
-- No concurrency limit until the provider first pushes back; then half of what was in
-- flight (at least the start value), growing again additively.
local conc = tonumber(f[2])
if limited and conc == nil then
  conc = math.max(tonumber(ARGV[6]), redis.call('ZCARD', KEYS[2]), tonumber(ARGV[8]))
end
if limited then
  -- Start again from empty buckets: the provider's view of them is empty too.
  redis.call('HSET', KEYS[1], 'req', '0', 'req_at', tostring(now), 'tok', '0',
    'tok_at', tostring(now))
  -- One cut per second: a burst of 429s is one congestion signal, not many.
  if adaptive and now - (tonumber(f[3]) or 0) > 1 then
    conc = math.max(2, conc / 2)
    redis.call('HSET', KEYS[1], 'd_conc_cut', tostring(now))
  end
elseif adaptive and conc ~= nil then
  conc = math.min(tonumber(ARGV[7]), conc + 4 / conc)
end
if adaptive and conc ~= nil then redis.call('HSET', KEYS[1], 'd_conc', tostring(conc)) end
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(paused)
"""
)

#: KEYS: waiting room, room lapse times. ARGV: the lane that has no waiter left.
LEAVE_ROOM = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
