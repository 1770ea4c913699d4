"""Idempotency-Key on POST requests: a retried request gets the first response, not a
second object.

The key is claimed by inserting its row (no status yet) in a transaction of its own; the
primary key (tenant, endpoint, key) makes concurrent duplicates collide, and the losers
wait for the winner's stored response. A request that ends in an error gives its key up,
so the client may retry with the same key (Stripe keeps 4xx results; promptq does not,
because a 4xx here creates nothing and a 5xx may be a passing outage)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

import anyio
import sqlalchemy as sa
import structlog
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.db import Database
from promptq.errors import InvalidRequest
from promptq.models import IdempotencyKey, utcnow

__all__ = [
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "Answer",
    "Idempotency",
    "check_key",
    "delete_expired_keys",
    "file_sha256",
    "fingerprint",
]

log = structlog.get_logger(__name__)

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
# A key still in progress after this long belongs to a request whose API process died.
_ABANDONED_AFTER = timedelta(minutes=10)


def check_key(value: str) -> str:
    """The key if it is 1-255 printable ASCII characters; 400 `invalid_idempotency_key`."""
    if not 0 < len(value) <= MAX_KEY_LENGTH or not (value.isascii() and value.isprintable()):
        raise InvalidRequest(
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
        )
    return value


def fingerprint(method: str, path: str, payload: Any) -> str:
    """SHA-256 of the method, path and canonical JSON of the request's content."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def file_sha256(stream: IO[bytes]) -> str:
    """SHA-256 of a spooled upload, read in chunks; the stream is left at its start."""
    digest = hashlib.sha256()
    stream.seek(0)
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


async def delete_expired_keys(session: AsyncSession, ttl_seconds: float) -> int:
    """Forget keys older than their time to live; returns how many."""
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    result = await session.execute(
        sa.delete(IdempotencyKey)
        .where(IdempotencyKey.created_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


Handler = Callable[[], Awaitable[BaseModel]]


@dataclass(frozen=True)
class Answer:
    """The response to send: fresh, or the stored one of an earlier request (`replayed`)."""

    body: dict[str, Any]
    status_code: int
    replayed: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {REPLAYED_HEADER: "true"} if self.replayed else {}


@dataclass
class Idempotency:
    """One request's Idempotency-Key (or none) and what it needs to claim it."""

    db: Database
    session: AsyncSession
    tenant: str
    method: str
    path: str
    key: str | None
    ttl: timedelta
    wait_seconds: float = 30.0
    poll_seconds: float = 0.1

    async def run(self, payload: Any, handler: Handler, status_code: int = 200) -> Answer:
        """Run `handler` once per key: a repeat with the same content replays the stored
        response, one with other content is 422 `idempotency_key_reused`."""
        if self.key is None:
            return Answer((await handler()).model_dump(mode="json"), status_code)
        request_hash = fingerprint(self.method, self.path, payload)
        # End the key lookup's transaction: this request may wait, and must not hold a
        # pooled connection meanwhile.
        await self.session.commit()
        stored = await self._claim(request_hash)
        if stored is not None:
            log.info("idempotency.replayed", endpoint=self._endpoint, tenant=self.tenant)
            return Answer(stored.response or {}, stored.status_code or 200, replayed=True)
        try:
            body = (await handler()).model_dump(mode="json")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release()
            raise
        await self._store(status_code, body)
        return Answer(body, status_code)

    @property
    def _endpoint(self) -> str:
        return f"{self.method} {self.path}"

    def _pk(self) -> sa.ColumnElement[bool]:
        return sa.and_(
            IdempotencyKey.tenant == self.tenant,
            IdempotencyKey.endpoint == self._endpoint,
            IdempotencyKey.key == self.key,
        )

    async def _claim(self, request_hash: str) -> IdempotencyKey | None:
        """None once this request owns the key; else the finished row of an earlier one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while True:
            if await self._insert(request_hash):
                return None
            row = await self._load()  # None: its owner failed and gave the key up
            if row is not None and self._stale(row):
                await self._delete_stale(row.created_at)
            elif row is not None:
                if row.request_hash != request_hash:
                    raise InvalidRequest(
                        "idempotency_key_reused",
                        "This Idempotency-Key was used with a different request; use a new key.",
                        422,
                    )
                if row.status_code is not None:
                    return row
            if loop.time() >= deadline:
                raise InvalidRequest(
                    "idempotency_key_in_progress",
                    "A request with this Idempotency-Key is still in progress; retry later.",
                    409,
                )
            if row is not None:
                await asyncio.sleep(self.poll_seconds)

    def _stale(self, row: IdempotencyKey) -> bool:
        age = utcnow() - row.created_at
        return age > self.ttl or (row.status_code is None and age > _ABANDONED_AFTER)

    async def _insert(self, request_hash: str) -> bool:
        async with self.db.session() as session:
            session.add(
                IdempotencyKey(
                    tenant=self.tenant,
                    endpoint=self._endpoint,
                    key=self.key,
                    request_hash=request_hash,
                    created_at=utcnow(),
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                return False
        return True

    async def _load(self) -> IdempotencyKey | None:
        async with self.db.session() as session:
            return (
                await session.execute(sa.select(IdempotencyKey).where(self._pk()))
            ).scalar_one_or_none()

    async def _write(self, stmt: sa.Update | sa.Delete, event: str) -> None:
        # Failures are logged, not raised: the request's own outcome is what the client
        # must see, and a key left in progress is taken over once abandoned.
        try:
            async with self.db.session() as session:
                await session.execute(stmt.execution_options(synchronize_session=False))
                await session.commit()
        except Exception:
            log.exception(event, endpoint=self._endpoint, tenant=self.tenant)

    async def _delete_stale(self, created_at: datetime) -> None:
        # Guarded by the timestamp: a fresh claim made meanwhile is not deleted.
        stmt = sa.delete(IdempotencyKey).where(self._pk(), IdempotencyKey.created_at == created_at)
        await self._write(stmt, "idempotency.takeover_failed")

    async def _release(self) -> None:
        stmt = sa.delete(IdempotencyKey).where(self._pk(), IdempotencyKey.status_code.is_(None))
        await self._write(stmt, "idempotency.release_failed")

    async def _store(self, status_code: int, body: dict[str, Any]) -> None:
        stmt = (
            sa.update(IdempotencyKey)
            .where(self._pk(), IdempotencyKey.status_code.is_(None))
            .values(status_code=status_code, response=body)
        )
        await self._write(stmt, "idempotency.store_failed")
