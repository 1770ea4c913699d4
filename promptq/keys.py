"""API keys: shown once at creation, stored only as a SHA-256, sent as bearer tokens."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.ids import new_id
from promptq.models import ApiKey

__all__ = ["create_key", "find_key", "hash_key"]

_PREFIX = "pq-"


def hash_key(token: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_key(
    session: AsyncSession,
    name: str,
    *,
    tenant: str | None = None,
    admin: bool = False,
    webhook_url: str | None = None,
) -> tuple[str, ApiKey]:
    """A new key for `tenant` (its own name by default); returns the token and its row."""
    token = f"{_PREFIX}{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=new_id("key_"),
        name=name,
        tenant=tenant or name,
        key_hash=hash_key(token),
        key_prefix=token[:10],
        is_admin=admin,
        webhook_url=webhook_url,
    )
    session.add(key)
    await session.commit()
    return token, key


async def find_key(session: AsyncSession, token: str) -> ApiKey | None:
    """The live key for a bearer token, or None."""
    stmt = sa.select(ApiKey).where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()
