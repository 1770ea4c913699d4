"""API keys: shown once at creation, stored only as a SHA-256, sent as bearer tokens.

Each key also gets its own webhook signing secret (`whsec_...`), shown once at creation
and rotatable with a grace period during which deliveries carry the old and the new
signature. The relay signs a tenant's events with the secrets of the tenant's live keys,
so no tenant can sign an event another tenant's receiver accepts."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.errors import PromptqError
from promptq.ids import new_id
from promptq.models import ApiKey, utcnow
from promptq.webhooks import new_secret

__all__ = [
    "KeyAdminError",
    "SigningSecrets",
    "create_key",
    "find_key",
    "hash_key",
    "list_keys",
    "revoke_key",
    "rotate_webhook_secret",
    "tenant_webhook_secrets",
]

_PREFIX = "pq-"
_MAX_NAME = 200  # api_keys.name and .tenant


class KeyAdminError(PromptqError):
    """A key administration command cannot do what it was asked (`promptq keys ...`)."""


@dataclass(frozen=True)
class SigningSecrets:
    """The secrets a tenant's webhooks are signed with, and whether the deployment-wide
    secret (PROMPTQ_WEBHOOK_SECRET) signs them too."""

    secrets: list[str]
    deployment: bool


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
    """A new key for `tenant` (its own name by default); returns the token and its row,
    whose `webhook_secret` is the key's new signing secret."""
    for field, value in (("name", name), ("tenant", tenant or name)):
        if not 0 < len(value) <= _MAX_NAME:
            raise KeyAdminError(f"A key's {field} has 1 to {_MAX_NAME} characters.")
    token = f"{_PREFIX}{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=new_id("key_"),
        name=name,
        tenant=tenant or name,
        key_hash=hash_key(token),
        key_prefix=token[:10],
        is_admin=admin,
        webhook_url=webhook_url,
        webhook_secret=new_secret(),
    )
    session.add(key)
    await session.commit()
    return token, key


async def find_key(session: AsyncSession, token: str) -> ApiKey | None:
    """The live key for a bearer token, or None."""
    stmt = sa.select(ApiKey).where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()


def _by_ref(ref: str) -> sa.ColumnElement[bool]:
    # A key is named by its id or by the prefix `keys list` shows.
    return sa.or_(ApiKey.id == ref, ApiKey.key_prefix == ref)


async def _one(session: AsyncSession, ref: str) -> ApiKey:
    rows = list((await session.execute(sa.select(ApiKey).where(_by_ref(ref)))).scalars())
    if not rows:
        raise KeyAdminError(f"No API key {ref!r}.")
    if len(rows) > 1:
        raise KeyAdminError(f"{ref!r} names several keys; use the id.")
    return rows[0]


async def list_keys(session: AsyncSession, tenant: str | None = None) -> list[ApiKey]:
    """Every key (of `tenant`, if given), oldest first, revoked ones included."""
    stmt = sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant == tenant)
    return list((await session.execute(stmt)).scalars())


async def revoke_key(session: AsyncSession, ref: str) -> ApiKey:
    """Revoke a key now (by id or prefix); its token stops working at once. Idempotent."""
    key = await _one(session, ref)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.commit()
    return key


async def rotate_webhook_secret(
    session: AsyncSession, ref: str, grace: timedelta
) -> tuple[str, ApiKey]:
    """Give a key a new webhook secret; the old one keeps signing for `grace` (deliveries
    carry both signatures meanwhile). Returns the new secret, shown once."""
    key = await _one(session, ref)
    if key.revoked_at is not None:
        raise KeyAdminError(f"The key {ref!r} is revoked.")
    secret = new_secret()
    key.webhook_secret_previous = key.webhook_secret
    # A key that had no secret of its own was signed with the deployment's: a previous
    # secret of None within the grace period keeps that signature coming.
    key.webhook_secret_previous_until = utcnow() + grace
    key.webhook_secret = secret
    await session.commit()
    return secret, key


async def tenant_webhook_secrets(
    session: AsyncSession, tenant: str, now: datetime | None = None
) -> SigningSecrets:
    """The secrets a tenant's events are signed with: every live key's current secret and
    any previous one still in its grace period. A key without its own secret (made before
    per-key secrets, or rotated from none within the grace period) adds the deployment's."""
    now = now or utcnow()
    stmt = sa.select(
        ApiKey.webhook_secret, ApiKey.webhook_secret_previous, ApiKey.webhook_secret_previous_until
    ).where(ApiKey.tenant == tenant, ApiKey.revoked_at.is_(None))
    found: list[str] = []
    deployment = False
    for current, previous, until in (await session.execute(stmt)).all():
        if until is not None and until > now:
            if previous is None:
                deployment = True
            elif previous not in found:
                found.append(previous)
        if current is None:
            deployment = True
        elif current not in found:
            found.append(current)
    return SigningSecrets(found, deployment or not found)
