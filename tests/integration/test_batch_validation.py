"""Batch validation after `POST /v1/batches` answered: lines become jobs a page at a time,
a validator that stopped midway resumes without storing a line twice, one validator at a
time holds a batch, a cancel during validation wins, and a file that cannot run as a whole
fails the batch with OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from promptq.batches import cancel_batch
from promptq.catalog import Catalog
from promptq.db import Database
from promptq.models import Batch, BatchStatus, Job, JobStatus, utcnow
from promptq.scheduler import validation as validation_module
from promptq.scheduler.validation import Validation, validate_batch
from tests.factories import batch_line, one_model_catalog, validating_batch

pytestmark = pytest.mark.anyio


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return one_model_catalog(tmp_path, 1000, 2000)


async def _state(db: Database, batch_id: str) -> tuple[Batch, list[tuple[int, str, str | None]]]:
    async with db.session() as session:
        batch = await session.get(Batch, batch_id)
        assert batch is not None
        rows = await session.execute(
            sa.select(Job.line_no, Job.status, Job.error_code)
            .where(Job.batch_id == batch_id)
            .order_by(Job.line_no)
        )
        return batch, [(r[0], str(r[1]), r[2]) for r in rows]


async def test_a_validator_that_stopped_midway_resumes_without_storing_a_line_twice(
    any_db: Database, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch of five lines (the fourth repeats the first custom_id), read two at a time
    monkeypatch.setattr(validation_module, "_PAGE", 2)
    lines = [
        batch_line("a"),
        batch_line("b"),
        batch_line("c"),
        batch_line("a"),
        batch_line("e", model="nope"),
    ]
    batch_id = await validating_batch(any_db, *lines)
    validation = Validation(any_db, catalog, None, 32, 3, 100)
    # When its first validator dies after storing the first page
    store = validation_module._store
    calls = 0

    async def dies_on_the_second_page(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the API process died")
        return await store(*args)

    monkeypatch.setattr(validation_module, "_store", dies_on_the_second_page)
    with pytest.raises(RuntimeError):
        await validate_batch(validation, batch_id)
    halfway, stored = await _state(any_db, batch_id)
    assert halfway.status == BatchStatus.VALIDATING and len(stored) == 2
    # And another validator runs it again
    assert await validate_batch(validation, batch_id)
    # Then every line is stored once, the repeat still found across the restart
    batch, jobs = await _state(any_db, batch_id)
    assert batch.status == BatchStatus.IN_PROGRESS
    assert batch.estimated_cost_usd is not None and batch.estimated_cost_usd > 0
    assert jobs == [
        (1, "queued", None),
        (2, "queued", None),
        (3, "queued", None),
        (4, "failed", "duplicate_custom_id"),
        (5, "failed", "model_not_found"),
    ]


async def test_one_validator_at_a_time_holds_a_batch(db: Database, catalog: Catalog) -> None:
    # Given a batch whose validation lock another process holds
    batch_id = await validating_batch(db, batch_line("a"))
    key = validation_module._lock_key(batch_id)
    async with db.engine.connect() as other:
        assert await other.scalar(sa.select(sa.func.pg_try_advisory_lock(key)))
        # When a second validator tries it
        ran = await validate_batch(Validation(db, catalog, None, 32, 3, 100), batch_id)
        # Then it leaves the batch alone
        assert ran is False
        assert (await _state(db, batch_id))[0].status == BatchStatus.VALIDATING
        await other.execute(sa.select(sa.func.pg_advisory_unlock(key)))
    # And once the lock is free, validation runs
    assert await validate_batch(Validation(db, catalog, None, 32, 3, 100), batch_id)
    assert (await _state(db, batch_id))[0].status == BatchStatus.IN_PROGRESS


async def test_a_batch_cancelled_while_validating_ends_cancelled_and_stores_no_line(
    any_db: Database, catalog: Catalog
) -> None:
    # Given a batch cancelled before its validation ran
    batch_id = await validating_batch(any_db, batch_line("a"), batch_line("b"))
    async with any_db.session() as session:
        batch = await session.get(Batch, batch_id)
        assert batch is not None
        cancelled = await cancel_batch(session, batch)
    assert cancelled.status == BatchStatus.CANCELLED
    # When the validator gets to it
    await validate_batch(Validation(any_db, catalog, None, 32, 3, 100), batch_id)
    # Then it stays cancelled, with no line stored
    batch, jobs = await _state(any_db, batch_id)
    assert (batch.status, jobs) == (BatchStatus.CANCELLED, [])


@pytest.mark.parametrize(
    ("lines", "extra", "code"),
    [
        ([b"{oops}\n", batch_line("a", model="nope")], {}, "no_valid_lines"),
        (
            [batch_line("a"), batch_line("b")],
            {"max_cost_usd": Decimal("0.0000001")},
            "estimate_too_high",
        ),
    ],
)
async def test_a_file_that_cannot_run_as_a_whole_fails_the_batch_with_errors(
    any_db: Database, catalog: Catalog, lines: list[bytes], extra: dict[str, Any], code: str
) -> None:
    # Given a batch whose file cannot run as a whole
    batch_id = await validating_batch(any_db, *lines, **extra)
    # When it is validated
    await validate_batch(Validation(any_db, catalog, None, 32, 3, 100), batch_id)
    # Then it failed with that code, and no line is left to run
    batch, jobs = await _state(any_db, batch_id)
    assert batch.status == BatchStatus.FAILED and batch.failed_at is not None
    assert batch.errors is not None and [e["code"] for e in batch.errors] == [code]
    assert all(status != JobStatus.QUEUED for _, status, _ in jobs)


async def test_the_sweeper_validates_a_batch_its_api_left_validating(
    db: Database, catalog: Catalog, integration_pg_url: str, env: dict[str, str]
) -> None:
    import redis.asyncio as aioredis
    from prometheus_client import REGISTRY

    from promptq.config import Settings
    from promptq.scheduler.sweeper import Sweeper
    from promptq.workers.celery_app import make_celery

    # Given a batch made a minute ago whose API died before validating it
    batch_id = await validating_batch(db, batch_line("a"), batch_line("b"))
    async with db.session() as session:
        await session.execute(
            sa.update(Batch)
            .where(Batch.id == batch_id)
            .values(created_at=utcnow() - timedelta(minutes=1))
        )
        await session.commit()
    counter = ("promptq_sweeper_actions_total", {"action": "validations_resumed"})
    before = REGISTRY.get_sample_value(*counter) or 0.0
    settings = Settings(database_url=integration_pg_url, redis_url=env["PROMPTQ_REDIS_URL"])
    redis = aioredis.Redis.from_url(settings.redis_url)
    # When the sweeper runs
    sweeper = Sweeper(settings, db, make_celery(settings), redis, catalog)
    await sweeper.sweep()
    for _ in range(200):  # it validates in the background, and counts it when done
        if (REGISTRY.get_sample_value(*counter) or 0.0) > before:
            break
        await asyncio.sleep(0.05)
    await sweeper.validator.close()
    await redis.aclose()
    # Then the batch is in progress with its lines queued and marked sent, and counted
    batch, jobs = await _state(db, batch_id)
    assert batch.status == BatchStatus.IN_PROGRESS
    assert jobs == [(1, "queued", None), (2, "queued", None)]
    async with db.session() as session:
        unsent = await session.scalar(
            sa.select(sa.func.count()).where(Job.batch_id == batch_id, Job.enqueued_at.is_(None))
        )
    assert unsent == 0
    assert (REGISTRY.get_sample_value(*counter) or 0.0) == before + 1
