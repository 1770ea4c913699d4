"""The webhook relay: claims due outbox events, sends them signed in the Standard Webhooks
format, and retries failures with exponential backoff and jitter under the same webhook-id.

A claim is a guarded UPDATE that moves the event's `next_attempt_at` past a lease, so
relays running side by side never send one event at once, and an event whose relay died
mid-send is sent again once the lease ends (receivers deduplicate by webhook-id)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
import structlog

from promptq import __version__
from promptq.backoff import backoff_delay
from promptq.config import Settings
from promptq.db import Database
from promptq.errors import RetryableError
from promptq.keys import tenant_webhook_secrets
from promptq.metrics import WEBHOOK_DELIVERIES
from promptq.models import WebhookEvent, WebhookStatus, utcnow
from promptq.webhooks import (
    AllowList,
    IPAddress,
    WebhookTarget,
    WebhookURLRefused,
    decode_secret,
    resolve_target,
    signed_headers,
    signing_key,
)

__all__ = ["Delivery", "Outcome", "Relay"]

log = structlog.get_logger(__name__)

_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Delivery:
    """One claimed attempt at sending one event."""

    id: str
    url: str
    payload: dict[str, Any]
    attempt: int
    tenant: str = ""


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: `error` is None when the receiver answered 2xx."""

    delivery: Delivery
    error: str | None = None
    refused: bool = False


class Relay:
    """Delivers outbox events; any number of relays may run against one database."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        key: bytes | None = None,  # the deployment's secret (see keys.tenant_webhook_secrets)
        concurrency: int = 32,
    ) -> None:
        self.settings = settings
        self.db = db
        self.key = key if key is not None else signing_key(settings)
        self.allow = AllowList.from_settings(settings)
        self.concurrency = concurrency
        # Longer than one attempt can take (a timeout per address tried, and then some).
        self.lease = timedelta(seconds=settings.webhook_timeout_seconds * 3 + 30)
        # No redirects and no proxies from the environment: the relay connects only to
        # the address it vetted.
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": f"promptq-webhooks/{__version__}"},
        )

    async def run_forever(self) -> None:
        """Deliver due events until cancelled, polling every `webhook_poll_seconds`."""
        inflight: set[asyncio.Task[Outcome]] = set()
        log.info("webhook.relay_started", max_attempts=self.settings.webhook_max_attempts)
        try:
            while True:
                claimed: list[Delivery] = []
                try:
                    claimed = await self.claim(self.concurrency - len(inflight))
                except Exception:
                    log.exception("webhook.relay_failed")
                for delivery in claimed:
                    task = asyncio.create_task(self.deliver(delivery))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                if not claimed:
                    await asyncio.sleep(self.settings.webhook_poll_seconds)
        finally:
            for task in inflight:
                task.cancel()
            await self.client.aclose()

    async def relay_once(self) -> list[Outcome]:
        """Claim what is due now and attempt each event once (tests and tools)."""
        claimed = await self.claim(self.concurrency)
        return list(await asyncio.gather(*(self.deliver(d) for d in claimed)))

    async def claim(self, limit: int) -> list[Delivery]:
        """Take up to `limit` due events for one attempt each."""
        if limit <= 0:
            return []
        now = utcnow()
        due = sa.and_(
            WebhookEvent.status == WebhookStatus.PENDING, WebhookEvent.next_attempt_at <= now
        )
        pick = sa.select(WebhookEvent.id).where(due).order_by(WebhookEvent.next_attempt_at)
        pick = pick.limit(limit)
        if not self.db.is_sqlite:  # SQLite has one writer at a time: the UPDATE suffices
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            sa.update(WebhookEvent)
            .where(WebhookEvent.id.in_(pick.scalar_subquery()), due)
            .values(attempts=WebhookEvent.attempts + 1, next_attempt_at=now + self.lease)
            .returning(
                WebhookEvent.id,
                WebhookEvent.url,
                WebhookEvent.payload,
                WebhookEvent.attempts,
                WebhookEvent.tenant,
            )
            .execution_options(synchronize_session=False)
        )
        async with self.db.session() as session:
            rows = (await session.execute(stmt)).all()
            await session.commit()
        return [Delivery(r.id, r.url, r.payload, r.attempts, r.tenant) for r in rows]

    async def deliver(self, delivery: Delivery) -> Outcome:
        """One attempt: vet the URL again, POST the signed payload, record the outcome."""
        try:
            outcome = await self._attempt(delivery)
        except Exception as exc:
            log.exception("webhook.attempt_crashed", event_id=delivery.id)
            outcome = Outcome(delivery, f"relay error: {exc!r}")
        try:
            await self._record(outcome)
        except Exception:
            log.exception("webhook.record_failed", event_id=delivery.id)
        return outcome

    async def _attempt(self, delivery: Delivery) -> Outcome:
        try:
            target = await resolve_target(delivery.url, self.allow)
        except WebhookURLRefused as exc:
            return Outcome(delivery, f"refused: {exc.message}", refused=True)
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        headers = {
            "content-type": "application/json",
            **signed_headers(await self._keys(delivery), delivery.id, body, int(time.time())),
        }
        error = "no address to connect to"
        for address in target.addresses:
            try:
                status = await self._post(target, address, body, headers)
            except httpx.ConnectError as exc:
                error = f"connection to {address} failed: {exc}"
                continue  # try the host's next address
            except httpx.TimeoutException:
                timeout = self.settings.webhook_timeout_seconds
                return Outcome(delivery, f"timed out after {timeout}s")
            except httpx.HTTPError as exc:
                return Outcome(delivery, f"{type(exc).__name__}: {exc}")
            return Outcome(delivery, None if 200 <= status < 300 else f"HTTP {status}")
        return Outcome(delivery, error)

    async def _keys(self, delivery: Delivery) -> list[bytes]:
        # Read per attempt, so a rotation or a revocation applies to the next delivery.
        async with self.db.session() as session:
            found = await tenant_webhook_secrets(session, delivery.tenant)
        keys = [decode_secret(secret) for secret in found.secrets]
        if found.deployment:
            keys.append(self.key)
        return keys

    async def _post(
        self, target: WebhookTarget, address: IPAddress, body: bytes, headers: dict[str, str]
    ) -> int:
        # Connect to the vetted address, not to whatever the name resolves to a moment
        # later (DNS rebinding); Host and TLS SNI still name the URL's host.
        url = httpx.URL(target.url)
        extensions = {"sni_hostname": url.raw_host.decode()} if url.scheme == "https" else {}
        async with self.client.stream(
            "POST",
            url.copy_with(host=str(address)),
            content=body,
            headers={**headers, "host": url.netloc.decode()},
            extensions=extensions,
        ) as response:
            return response.status_code

    async def _record(self, outcome: Outcome) -> None:
        delivery, now = outcome.delivery, utcnow()
        error = outcome.error[:_MAX_ERROR_CHARS] if outcome.error else None
        values: dict[str, Any] = {"last_error": error}
        if error is None:
            values.update(status=WebhookStatus.DELIVERED, delivered_at=now)
        elif outcome.refused or delivery.attempt >= self.settings.webhook_max_attempts:
            values.update(status=WebhookStatus.FAILED)
        else:
            delay = backoff_delay(
                delivery.attempt,
                RetryableError("webhook_failed", error),
                self.settings.webhook_retry_base_seconds,
                self.settings.webhook_retry_max_seconds,
            )
            values.update(next_attempt_at=now + timedelta(seconds=delay))
        async with self.db.session() as session:
            await session.execute(
                sa.update(WebhookEvent)
                .where(
                    WebhookEvent.id == delivery.id,
                    WebhookEvent.status == WebhookStatus.PENDING,
                    WebhookEvent.attempts == delivery.attempt,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        _log_outcome(outcome, values)
        if error is None:
            WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
        else:
            WEBHOOK_DELIVERIES.labels(outcome="failed" if "status" in values else "retry").inc()


def _log_outcome(outcome: Outcome, values: dict[str, Any]) -> None:
    fields = {"event_id": outcome.delivery.id, "attempt": outcome.delivery.attempt}
    if outcome.error is None:
        log.info("webhook.delivered", **fields)
    elif values.get("status") is WebhookStatus.FAILED:
        log.warning("webhook.failed", error=outcome.error, **fields)
    else:
        retry_at = values["next_attempt_at"].isoformat()
        log.info("webhook.retry_scheduled", error=outcome.error, retry_at=retry_at, **fields)
