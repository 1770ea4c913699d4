"""The exact response cache, shared by every worker through Redis, with single flight.

The key is the tenant, the serving model and the canonical request body (every field that
can change the answer), so a cache entry is never shared across tenants. Identical
requests in flight at the same time coalesce: the first to take a short Redis lock calls
the backend (the leader), the others wait for its answer; if the leader fails, the lock is
dropped and one of the waiters leads instead. Within one process waiters share one poll.

A hit replays the stored answer: for a sampled request (temperature > 0) that is one
sample, the same for every hit, not a fresh draw."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from promptq.constants import CACHE_LOCK_PREFIX, CACHE_PREFIX

__all__ = [
    "IGNORED_FIELDS",
    "CachedAnswer",
    "Hit",
    "Lead",
    "ResponseCache",
    "cache_key",
    "canonical_body",
]

#: Request fields that do not change the answer, left out of the key.
IGNORED_FIELDS = frozenset(
    {"model", "stream", "stream_options", "user", "metadata", "store", "cache", "service_tier"}
)
_POLL_FIRST = 0.01
_POLL_MAX = 0.2
# One round trip per look-up: the answer if there is one, else the lock if it is free
# (GET and SET NX together, so no leader can store and unlock between them).
# KEYS: entry, lock; ARGV: token, lock ms. Returns {1, answer} | {2, ''} (lead) | {0, ''}.
_LOOKUP = """
local answer = redis.call('get', KEYS[1])
if answer then return {1, answer} end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {0, ''}
"""
# Store the answer (ARGV[2] given: with a TTL of ARGV[2] s) and drop the lock if this leader
# still holds it (it may have expired and been taken). KEYS: entry, lock; ARGV: token, ttl,
# answer.
_STORE_AND_UNLOCK = """
if ARGV[2] ~= '' then redis.call('set', KEYS[1], ARGV[3], 'EX', ARGV[2]) end
if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
return 1
"""


def canonical_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a chat-completions body that can change the answer."""
    return {k: v for k, v in body.items() if k not in IGNORED_FIELDS and v is not None}


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(tenant: str, model: str, body: Mapping[str, Any]) -> str:
    """The cache key of a request: tenant, serving model and canonical body, hashed."""
    return _digest({"tenant": tenant, "model": model, "body": canonical_body(body)})


@dataclass(frozen=True)
class CachedAnswer:
    """What a cache entry replays: the answer, its usage, and the job that paid for it."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    response: dict[str, Any]
    source_job_id: str

    def dumps(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies the response first.
        fields = {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes | str) -> CachedAnswer:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Hit:
    """The answer was in the cache (or arrived from the leader we waited for)."""

    answer: CachedAnswer


@dataclass(frozen=True)
class Lead:
    """Nobody has the answer: this caller must get it, then `store` or `abandon`."""

    key: str
    token: str


class ResponseCache:
    """The exact cache over one Redis client; one per worker process, on its loop."""

    def __init__(self, redis: aioredis.Redis, *, lock_seconds: float) -> None:
        self._redis = redis
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self._local: dict[str, asyncio.Event] = {}  # keys this process is leading
        self._lookup = _Together(redis, _LOOKUP)
        self._store = _Together(redis, _STORE_AND_UNLOCK)
        self.counters = {"hits": 0, "misses": 0, "waits": 0}

    async def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for `key`, if any."""
        raw = await self._redis.get(CACHE_PREFIX + key)
        return None if raw is None else CachedAnswer.loads(raw)

    async def lookup(self, key: str, max_wait: float) -> Hit | Lead:
        """A hit, or the lead on `key`; waits (up to `max_wait` s) while another request
        for the same key is in flight anywhere."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        delay = _POLL_FIRST
        waited = False
        while True:
            local = self._local.get(key)
            if local is None:
                token = secrets.token_hex(8)
                keys = [CACHE_PREFIX + key, CACHE_LOCK_PREFIX + key]
                found, raw = await self._lookup(keys, [token, self._lock_ms])
                if int(found) == 1:
                    self.counters["hits"] += 1
                    return Hit(CachedAnswer.loads(raw))
                if int(found) == 2:
                    self._local[key] = asyncio.Event()
                    self.counters["misses"] += 1
                    return Lead(key, token)
            else:
                answer = await self.get(key)
                if answer is not None:
                    self.counters["hits"] += 1
                    return Hit(answer)
            if loop.time() >= deadline:  # the leader is too slow: call the backend too
                self.counters["misses"] += 1
                return Lead(key, "")
            if not waited:
                self.counters["waits"] += 1
                waited = True
            if local is not None:  # led here: wait for our own leader, no polling
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(local.wait(), max(0.0, deadline - loop.time()))
                continue
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, _POLL_MAX)

    async def store(self, lead: Lead, answer: CachedAnswer, ttl_seconds: int) -> None:
        """Keep the leader's answer for `ttl_seconds` and let the waiters have it."""
        await self._finish(lead, answer.dumps(), ttl_seconds)

    async def abandon(self, lead: Lead) -> None:
        """The leader got no answer: release the lock so a waiter can lead."""
        await self._finish(lead, b"", None)

    async def _finish(self, lead: Lead, value: bytes, ttl_seconds: int | None) -> None:
        event = self._local.pop(lead.key, None) if lead.token else None
        try:
            keys = [CACHE_PREFIX + lead.key, CACHE_LOCK_PREFIX + lead.key]
            ttl = "" if ttl_seconds is None else str(ttl_seconds)
            await self._store(keys, [lead.token, ttl, value])
        finally:
            if event is not None:
                event.set()


_Call = tuple[list[str], list[Any], "asyncio.Future[Any]"]


class _Together:
    """One Lua script, called by many jobs: the calls made at about the same moment (the
    jobs of a chunk start together) go to Redis in one pipeline, one round trip and one
    pooled connection for all of them, instead of one each."""

    def __init__(self, redis: aioredis.Redis, script: str) -> None:
        self._redis = redis
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._calls: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.append((keys, args, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._calls:
                calls, self._calls = self._calls, []
                try:
                    results = await self._run(calls)
                except Exception as exc:
                    results = [exc] * len(calls)
                for (_, _, future), result in zip(calls, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._sender = None

    async def _run(self, calls: list[_Call]) -> list[Any]:
        for _ in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args, _future in calls:
                    pipe.evalsha(self._sha, len(keys), *keys, *args)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results):
                break
            await self._redis.script_load(self._script)  # Redis was restarted or flushed
        return results
