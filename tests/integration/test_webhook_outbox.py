"""The webhook outbox against real databases: events commit with the state change they
report, once; relays never share an event; failures retry, then give up.

These tests use a database of their own: the session's scheduler relays events from the
shared one."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from promptq.batches import finalize_batch
from promptq.config import Settings
from promptq.db import Database
from promptq.jobs import JobOutcome, claim, record_failure, record_success
from promptq.models import (
    Batch,
    BatchStatus,
    File,
    FilePurpose,
    Job,
    JobStatus,
    WebhookEvent,
    WebhookStatus,
    utcnow,
)
from promptq.scheduler.relay import Relay
from promptq.webhooks import emit
from tests.conftest import WEBHOOK_SECRET
from tests.factories import add_jobs
from tests.webhook_receiver import receiver

pytestmark = pytest.mark.anyio

OUTCOME = JobOutcome(
    content="hi",
    finish_reason="stop",
    prompt_tokens=3,
    completion_tokens=2,
    cost_usd=Decimal("0.000001"),
    response={"object": "chat.completion"},
)


@pytest.fixture
def pg(db: Database) -> Database:
    """The integration tests' own Postgres database, emptied (no scheduler sweeps it)."""
    return db


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "webhook_secret": WEBHOOK_SECRET,
        "webhook_allowed_hosts": ["127.0.0.1"],
        "webhook_retry_base_seconds": 0,
        "webhook_retry_max_seconds": 0,
        **overrides,
    }
    return Settings.model_validate(values)


async def _events(db: Database) -> list[WebhookEvent]:
    async with db.session() as session:
        return list((await session.execute(sa.select(WebhookEvent))).scalars())


async def _add_events(db: Database, url: str, n: int) -> None:
    async with db.session() as session:
        for i in range(n):
            emit(session, tenant="t", event_type="test.event", url=url, data={"i": i})
        await session.commit()


async def test_a_final_job_state_commits_with_its_event_and_a_lost_lease_adds_none(
    pg: Database,
) -> None:
    # Given two jobs with a webhook_url and one without, claimed by a worker
    await add_jobs(pg, "job_ok", webhook_url="https://hooks.example/ok")
    await add_jobs(pg, "job_bad", webhook_url="https://hooks.example/bad")
    await add_jobs(pg, "job_quiet", webhook_url=None)
    async with pg.session() as session:
        ok, bad, quiet = sorted(
            await claim(session, ["job_ok", "job_bad", "job_quiet"], "w1", 60),
            key=lambda j: ["job_ok", "job_bad", "job_quiet"].index(j.id),
        )
        # When they finish, and a late duplicate result comes in
        assert ok.webhook_url == "https://hooks.example/ok"
        assert await record_success(session, ok, OUTCOME)
        assert await record_failure(session, bad, "invalid_request", "no", 400)
        assert await record_success(session, quiet, OUTCOME)
        assert not await record_success(session, ok, OUTCOME)
    # Then there is one event per job with a webhook_url, carrying the final job
    events = {e.event_type: e for e in await _events(pg)}
    assert set(events) == {"job.succeeded", "job.failed"}
    succeeded = events["job.succeeded"]
    assert succeeded.url == "https://hooks.example/ok"
    assert succeeded.status == WebhookStatus.PENDING
    assert succeeded.payload["data"]["id"] == "job_ok"
    assert succeeded.payload["data"]["result"]["content"] == "hi"
    assert events["job.failed"].payload["data"]["error"]["code"] == "invalid_request"


async def _add_finished_batch(db: Database) -> None:
    now = utcnow()
    async with db.session() as session:
        session.add(File(id="file-in", tenant="t", purpose=FilePurpose.BATCH, filename="in"))
        await session.flush()
        session.add(
            Batch(
                id="batch_1",
                tenant="t",
                input_file_id="file-in",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                status=BatchStatus.IN_PROGRESS,
                webhook_url="https://hooks.example/batch",
                created_at=now,
                expires_at=now,
            )
        )
        await session.flush()
        for i, status in enumerate([JobStatus.SUCCEEDED, JobStatus.FAILED]):
            session.add(
                Job(
                    id=f"job_b{i}",
                    tenant="t",
                    batch_id="batch_1",
                    line_no=i + 1,
                    status=status,
                    priority=5,
                    attempts=1,
                    max_attempts=3,
                )
            )
        await session.commit()


async def test_a_batch_finalized_by_several_workers_at_once_sends_one_event(
    any_db: Database,
) -> None:
    db = any_db
    # Given a batch whose jobs are all finished
    await _add_finished_batch(db)

    async def finalize() -> bool:
        async with db.session() as session:
            return await finalize_batch(session, "batch_1")

    # When four finalizers race, and one more comes later
    results = await asyncio.gather(*(finalize() for _ in range(4)))
    results.append(await finalize())
    # Then one finalized it, and one batch.completed event carries its counts
    assert sorted(results) == [False, False, False, False, True]
    (event,) = await _events(db)
    assert event.event_type == "batch.completed"
    assert event.payload["data"]["request_counts"]["completed"] == 1
    assert event.payload["data"]["request_counts"]["failed"] == 1
    async with db.session() as session:
        files = await session.scalar(sa.select(sa.func.count()).select_from(File))
    assert files == 3  # the input, one output and one error file


async def test_two_relays_never_claim_the_same_event(any_db: Database) -> None:
    db = any_db
    await _add_events(db, "http://127.0.0.1:9/hook", 40)
    relays = [Relay(_settings(), db) for _ in range(3)]
    claimed = await asyncio.gather(*(r.claim(20) for r in relays for _ in range(2)))
    ids = [d.id for batch in claimed for d in batch]
    assert len(ids) == len(set(ids)) == 40
    assert await relays[0].claim(20) == []  # all are leased now
    for relay in relays:
        await relay.client.aclose()


async def test_an_internal_url_is_refused_at_delivery_time(pg: Database) -> None:
    # Given an event whose URL reaches an internal address (allowed when it was made)
    await _add_events(pg, "http://10.0.0.1/hook", 1)
    relay = Relay(_settings(webhook_allowed_hosts=[]), pg)
    # When the relay runs
    (outcome,) = await relay.relay_once()
    await relay.client.aclose()
    # Then it is failed without a request, saying why
    (event,) = await _events(pg)
    assert event.status == WebhookStatus.FAILED
    assert event.last_error is not None and event.last_error.startswith("refused: ")
    assert outcome.refused and event.attempts == 1


def _deliveries() -> dict[str, float]:
    name = "promptq_webhook_deliveries_total"
    outcomes = ("delivered", "retry", "failed")
    return {o: REGISTRY.get_sample_value(name, {"outcome": o}) or 0.0 for o in outcomes}


async def test_a_failing_receiver_gets_max_attempts_then_the_event_fails(pg: Database) -> None:
    before = _deliveries()
    with receiver(fail_first=100) as hooks:
        await _add_events(pg, f"{hooks.url}/down", 1)
        relay = Relay(_settings(webhook_max_attempts=3), pg)
        for _ in range(4):
            await relay.relay_once()
        await relay.client.aclose()
        seen = hooks.for_path("/down")
    # The relay's /metrics counted two retries, then the failure
    after = _deliveries()
    assert {k: after[k] - before[k] for k in after} == {"delivered": 0, "retry": 2, "failed": 1}
    (event,) = await _events(pg)
    assert (event.status, event.attempts, event.last_error) == (
        WebhookStatus.FAILED,
        3,
        "HTTP 500",
    )
    assert len(seen) == 3 and len({r.headers["webhook-id"] for r in seen}) == 1


async def test_delivery_connects_to_the_vetted_address_and_keeps_the_host(pg: Database) -> None:
    # Given an allowed hostname that resolves to the receiver's loopback address
    with receiver() as hooks:
        port = hooks.url.rsplit(":", 1)[1]
        await _add_events(pg, f"http://localhost:{port}/named", 1)
        relay = Relay(_settings(webhook_allowed_hosts=["localhost"]), pg)
        (outcome,) = await relay.relay_once()
        await relay.client.aclose()
        (delivery,) = hooks.for_path("/named")
    # Then it was delivered with the URL's Host header and a valid signature
    assert outcome.error is None
    assert delivery.headers["host"] == f"localhost:{port}"
    assert Webhook(WEBHOOK_SECRET).verify(delivery.body, delivery.headers)["type"] == "test.event"
    (event,) = await _events(pg)
    assert event.status == WebhookStatus.DELIVERED and event.delivered_at is not None
