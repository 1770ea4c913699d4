"""Guarded job transitions: a late or repeated result cannot change a finished job or bill
twice; the sweeper re-queues lost leases and fails poison jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from promptq.catalog import Catalog
from promptq.db import Database
from promptq.jobs import cancel, claim, record_failure, record_success, renew, retry
from promptq.models import Job, JobStatus, UsageRecord, WebhookEvent, utcnow
from tests.factories import OUTCOME, add_jobs, get_job

pytestmark = pytest.mark.anyio


async def _ledger_rows(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(sa.select(sa.func.count()).select_from(UsageRecord)) or 0)


async def test_a_job_is_claimed_once_even_if_its_message_comes_twice(db: Database) -> None:
    await add_jobs(db, "job_1")
    async with db.session() as session:
        first = await claim(session, ["job_1"], "w1", 60)
        second = await claim(session, ["job_1"], "w2", 60)
    assert [j.id for j in first] == ["job_1"] and second == []
    assert (await get_job(db)).attempts == 1


async def test_the_heartbeat_renews_only_the_jobs_the_worker_still_runs(db: Database) -> None:
    # Given two jobs claimed by w1 with short leases, one of whose tasks has ended (a bug)
    await add_jobs(db, "job_1", "job_2")
    async with db.session() as session:
        await claim(session, ["job_1", "job_2"], "w1", 1)
        # When the heartbeat renews the one still running
        renewed = await renew(session, "w1", ["job_1"], 600)
    # Then only its lease is extended; the other runs out and the sweeper re-queues it
    async with db.session() as session:
        leases = dict(
            (await session.execute(sa.select(Job.id, Job.lease_expires_at))).tuples().all()
        )
    assert renewed == 1
    soon = utcnow() + timedelta(seconds=60)
    assert leases["job_1"] is not None and leases["job_1"] > soon
    assert leases["job_2"] is not None and leases["job_2"] < soon


async def test_a_duplicate_result_adds_no_second_ledger_row(db: Database) -> None:
    await add_jobs(db, "job_1")
    async with db.session() as session:
        (job,) = await claim(session, ["job_1"], "w1", 60)
        assert await record_success(session, job, OUTCOME)
        assert not await record_success(session, job, OUTCOME)
        assert not await record_failure(session, job, "late", "too late", 500)
    final = await get_job(db)
    assert (final.status, final.content) == (JobStatus.SUCCEEDED, "hi")
    assert await _ledger_rows(db) == 1


async def test_a_result_from_a_worker_that_lost_its_lease_is_dropped(db: Database) -> None:
    # Given a job claimed by w1, whose lease the sweeper gave to w2
    await add_jobs(db, "job_1")
    async with db.session() as session:
        (old,) = await claim(session, ["job_1"], "w1", 60)
        await session.execute(sa.update(Job).values(status=JobStatus.QUEUED))
        await session.commit()
        (new,) = await claim(session, ["job_1"], "w2", 60)
        # When both report
        late = await record_success(session, old, OUTCOME)
        current = await record_success(session, new, OUTCOME)
    # Then only the current holder's result counts, once
    assert (late, current) == (False, True)
    assert await _ledger_rows(db) == 1
    assert (await get_job(db)).attempts == 2


async def test_a_retry_counts_as_an_attempt_under_the_same_lease(db: Database) -> None:
    await add_jobs(db, "job_1")
    async with db.session() as session:
        (job,) = await claim(session, ["job_1"], "w1", 60)
        retried = await retry(session, job, 60, "rate_limited", "429")
    assert retried is not None and retried.attempt == 2
    assert (await get_job(db)).attempts == 2


def _sweeper_counts() -> dict[str, float]:
    from prometheus_client import REGISTRY

    from promptq.metrics import SWEEPER_ACTION_NAMES

    name = "promptq_sweeper_actions_total"
    return {a: REGISTRY.get_sample_value(name, {"action": a}) or 0.0 for a in SWEEPER_ACTION_NAMES}


async def test_the_sweeper_requeues_expired_leases_and_fails_exhausted_jobs(
    db: Database, integration_pg_url: str, env: dict[str, str]
) -> None:
    import redis.asyncio as aioredis

    from promptq.config import Settings
    from promptq.scheduler.sweeper import Sweeper
    from promptq.workers.celery_app import make_celery

    # Given two running jobs whose worker died: one with attempts left, one without
    await add_jobs(db, "job_a", max_attempts=3)
    await add_jobs(db, "job_b", max_attempts=1, webhook_url="https://hooks.example/x")
    async with db.session() as session:
        await claim(session, ["job_a", "job_b"], "dead-worker", 60)
        await session.execute(sa.update(Job).values(lease_expires_at=utcnow() - timedelta(1)))
        await session.commit()
    settings = Settings(database_url=integration_pg_url, redis_url=env["PROMPTQ_REDIS_URL"])
    redis = aioredis.Redis.from_url(settings.redis_url)
    before = _sweeper_counts()
    # When the sweeper runs
    report = await Sweeper(settings, db, make_celery(settings), redis, Catalog({})).sweep()
    await redis.aclose()
    # Then its /metrics counters went up by what it did
    after = _sweeper_counts()
    moved = {action: after[action] - before[action] for action in after}
    assert moved == {
        "requeued": 1,
        "failed": 1,
        "published": report.published,
        "expired_jobs": 0,
        "expired_batches": 0,
        "finalized_batches": 0,
        "validations_resumed": 0,
    }
    assert report.published >= 1  # job_a went out again
    # Then the first is queued again (and re-sent), the second failed for good
    a, b = await get_job(db, "job_a"), await get_job(db, "job_b")
    assert (report.requeued, report.failed) == (1, 1)
    assert a.status == JobStatus.QUEUED and a.enqueued_at is not None
    assert (b.status, b.error_code) == (JobStatus.FAILED, "max_attempts_exceeded")
    # And the failure is announced to the job's webhook through the outbox
    async with db.session() as session:
        events = (await session.execute(sa.select(WebhookEvent))).scalars().all()
    assert [(e.event_type, e.payload["data"]["id"]) for e in events] == [("job.failed", "job_b")]


async def test_cancelling_a_running_job_emits_its_event_and_drops_its_lease(db: Database) -> None:
    # Given a running job with a webhook
    await add_jobs(db, "job_1", webhook_url="https://hooks.example/x")
    async with db.session() as session:
        (job,) = await claim(session, ["job_1"], "w1", 60)
        # When the client cancels it
        assert await cancel(session, "job_1")
        # Then a second cancel changes nothing, and the worker's late result is dropped
        assert not await cancel(session, "job_1")
        assert not await record_success(session, job, OUTCOME)
    final = await get_job(db)
    assert (final.status, final.error_code) == (JobStatus.CANCELLED, "job_cancelled")
    assert (final.lease_owner, final.lease_expires_at) == (None, None)
    assert await _ledger_rows(db) == 0
    # And the cancellation went to the job's webhook through the outbox, once
    async with db.session() as session:
        events = (await session.execute(sa.select(WebhookEvent))).scalars().all()
    assert [(e.event_type, e.payload["data"]["status"]) for e in events] == [
        ("job.cancelled", "cancelled")
    ]
