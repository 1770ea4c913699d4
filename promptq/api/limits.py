"""Request limits: body sizes, enforced before the body is parsed (413 as JSON), and
per-tenant concurrency of heavy requests (429), so one tenant cannot take the API from
the others."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass

import anyio
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptq.api.errors import error_json
from promptq.constants import tenant_slots_key
from promptq.errors import ApiError, InvalidRequest

__all__ = ["BodySizeLimit", "Slot", "TenantSlots"]

log = structlog.get_logger(__name__)


class _TooLarge(Exception):
    """The body passed its limit while the app was reading it."""


class BodySizeLimit:
    """Refuse bodies over `max_bytes` (uploads under /v1/files get `max_upload_bytes`)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/") == "/v1/files"
        limit = self.max_upload_bytes if upload else self.max_bytes
        length = dict(scope["headers"]).get(b"content-length")
        # A length too long for int() (4,300 digits) is too large anyway.
        if length is not None and length.isdigit() and (len(length) > 18 or int(length) > limit):
            await _refuse(send, limit)
            return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        # A body without a length (chunked) is counted as it arrives. The app may catch
        # the overflow while parsing (Starlette turns any form or JSON read error into a
        # 400), so the overflow is remembered and decides the response, whatever the app
        # answers.
        received = 0
        over = started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                if not started:
                    started = True
                    await _refuse(send, limit)
                return  # the app's own answer to the overflow is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if over and not started:
            await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    error = InvalidRequest(
        "payload_too_large", f"The request body is larger than {limit} bytes.", 413
    )
    body = json.dumps(error_json(error)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- per-tenant concurrency ---------------------------------------------------------------

# A sorted set per tenant and kind: one member per request in progress, scored by when its
# lease ends, so a slot whose API process died frees itself.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


@dataclass(frozen=True)
class Slot:
    """One request's place among its tenant's concurrent heavy requests."""

    key: str
    token: str


class TenantSlots:
    """At most `limit` heavy requests of one kind (uploads, file downloads) per tenant at
    once, across every API process (counted in Redis). Over the limit: 429 with
    Retry-After. Redis unreachable: allowed, since the limit protects and must not fail."""

    def __init__(self, redis: aioredis.Redis, lease_seconds: float = 120.0) -> None:
        self.redis = redis
        self.lease_ms = int(lease_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, tenant: str, kind: str, limit: int) -> Slot | None:
        """A slot, None if Redis cannot count; raises 429 over the limit."""
        slot = Slot(tenant_slots_key(kind, tenant), secrets.token_hex(8))
        now = int(time.time() * 1000)
        try:
            args: list[str | int] = [now, now + self.lease_ms, slot.token, limit, self.lease_ms]
            won = await self._acquire(keys=[slot.key], args=args)
        except (RedisError, OSError) as exc:
            log.warning("api.concurrency_unchecked", kind=kind, error=repr(exc)[:200])
            return None
        if not won:
            raise ApiError(
                "too_many_concurrent_requests",
                f"Too many {kind} in progress for this tenant (at most {limit} at once); "
                "retry when one finishes.",
                429,
                headers={"Retry-After": "1"},
            )
        return slot

    async def renew(self, slot: Slot | None) -> None:
        """Push the slot's lease forward (a long download calls this as it goes)."""
        if slot is not None:
            with contextlib.suppress(RedisError, OSError):
                deadline = int(time.time() * 1000) + self.lease_ms
                await self.redis.zadd(slot.key, {slot.token: deadline}, xx=True)

    async def release(self, slot: Slot | None) -> None:
        """Give the slot back; shielded, so a cancelled request still frees it."""
        if slot is None:
            return
        with anyio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
            await self.redis.zrem(slot.key, slot.token)
