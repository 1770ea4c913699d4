"""Per-key webhook secrets against a real database and a real receiver: a tenant's events
verify with its own secret only; a rotation sends both signatures until its grace ends;
keys without a secret of their own fall back to the deployment's."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from promptq.config import Settings
from promptq.db import Database
from promptq.keys import create_key, revoke_key, rotate_webhook_secret
from promptq.models import ApiKey
from promptq.scheduler.relay import Relay
from promptq.webhooks import emit
from tests.conftest import WEBHOOK_SECRET
from tests.webhook_receiver import Received, receiver

pytestmark = pytest.mark.anyio


def _settings() -> Settings:
    return Settings.model_validate(
        {
            "webhook_secret": WEBHOOK_SECRET,
            "webhook_allowed_hosts": ["127.0.0.1"],
            "webhook_retry_base_seconds": 0,
            "webhook_retry_max_seconds": 0,
        }
    )


async def _deliver(db: Database, tenant: str) -> Received:
    """Emit one event for `tenant`, relay it, and return what the receiver got."""
    with receiver() as hooks:
        async with db.session() as session:
            emit(session, tenant=tenant, event_type="test.event", url=f"{hooks.url}/h", data={})
            await session.commit()
        relay = Relay(_settings(), db)
        (outcome,) = await relay.relay_once()
        await relay.client.aclose()
        assert outcome.error is None
        (delivery,) = hooks.for_path("/h")
    return delivery


def _verifies(secret: str, delivery: Received) -> bool:
    try:
        Webhook(secret).verify(delivery.body, delivery.headers)
    except WebhookVerificationError:
        return False
    return True


async def _make_key(db: Database, tenant: str) -> ApiKey:
    async with db.session() as session:
        _, key = await create_key(session, tenant)
    return key


async def test_a_tenants_webhook_verifies_with_its_own_secret_only(db: Database) -> None:
    # Given two tenants, each with a key and so a secret of its own
    alice, bob = await _make_key(db, "alice"), await _make_key(db, "bob")
    assert alice.webhook_secret and bob.webhook_secret
    assert alice.webhook_secret != bob.webhook_secret
    # When an event of alice's is delivered
    delivery = await _deliver(db, "alice")
    # Then alice's secret verifies it, and neither bob's nor the deployment's does
    assert _verifies(alice.webhook_secret, delivery)
    assert not _verifies(bob.webhook_secret, delivery)
    assert not _verifies(WEBHOOK_SECRET, delivery)
    assert len(delivery.headers["webhook-signature"].split(" ")) == 1


async def test_a_rotation_sends_both_signatures_until_its_grace_period_ends(db: Database) -> None:
    # Given a key with its own secret
    key = await _make_key(db, "carol")
    old = key.webhook_secret
    assert old is not None
    # When its secret is rotated with an hour's grace
    async with db.session() as session:
        new, _ = await rotate_webhook_secret(session, key.id, timedelta(hours=1))
    during = await _deliver(db, "carol")
    # Then deliveries carry two signatures: old and new receivers both verify
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert _verifies(old, during) and _verifies(new, during)
    # And once the grace period is over, only the new secret verifies
    async with db.session() as session:
        await session.execute(
            sa.update(ApiKey)
            .where(ApiKey.id == key.id)
            .values(webhook_secret_previous_until=sa.func.now() - timedelta(seconds=1))
        )
        await session.commit()
    after = await _deliver(db, "carol")
    assert _verifies(new, after) and not _verifies(old, after)


async def test_a_key_without_its_own_secret_uses_the_deployments_until_rotated(
    db: Database,
) -> None:
    # Given a key made before per-key secrets (none of its own)
    key = await _make_key(db, "legacy")
    async with db.session() as session:
        await session.execute(
            sa.update(ApiKey).where(ApiKey.id == key.id).values(webhook_secret=None)
        )
        await session.commit()
    # Then its events are signed with the deployment's secret
    assert _verifies(WEBHOOK_SECRET, await _deliver(db, "legacy"))
    # When it gets its own secret with no grace period
    async with db.session() as session:
        new, _ = await rotate_webhook_secret(session, key.key_prefix, timedelta(0))
    # Then only its own secret verifies its events
    delivery = await _deliver(db, "legacy")
    assert _verifies(new, delivery) and not _verifies(WEBHOOK_SECRET, delivery)


async def test_a_revoked_keys_secret_stops_signing(db: Database) -> None:
    # Given a tenant with two keys, one then revoked
    keep, drop = await _make_key(db, "dave"), await _make_key(db, "dave")
    assert keep.webhook_secret and drop.webhook_secret
    before = await _deliver(db, "dave")
    assert _verifies(keep.webhook_secret, before) and _verifies(drop.webhook_secret, before)
    async with db.session() as session:
        await revoke_key(session, drop.key_prefix)
    # Then its secret no longer verifies the tenant's events, the other key's does
    after = await _deliver(db, "dave")
    assert _verifies(keep.webhook_secret, after)
    assert not _verifies(drop.webhook_secret, after)
