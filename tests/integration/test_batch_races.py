"""Batch transitions under races, against a real Postgres: a cancel that lands as the last
line completes never leaves a batch open, and a batch whose jobs are all done is always
brought to its end (by the finalizer, or by the sweeper's repair)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import sqlalchemy as sa

from promptq.batches import cancel_batch, expire_batch, finalize_batch
from promptq.db import Database
from promptq.errors import InvalidRequest
from promptq.jobs import ClaimedJob, JobOutcome, claim, record_success
from promptq.models import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    BatchStatus,
    File,
    FilePurpose,
    Job,
    JobStatus,
    utcnow,
)

pytestmark = pytest.mark.anyio

RACES = 300
OUTCOME = JobOutcome(
    content="hi",
    finish_reason="stop",
    prompt_tokens=3,
    completion_tokens=2,
    cost_usd=Decimal("0.000001"),
    response={"object": "chat.completion"},
)


async def _batch_with_one_line_left(db: Database, n: int) -> str:
    """Batch `n`: one line done, one queued; returns the queued job's id."""
    now = utcnow()
    async with db.session() as session:
        session.add(File(id=f"file-{n}", tenant="t", purpose=FilePurpose.BATCH, filename="in"))
        await session.flush()
        session.add(
            Batch(
                id=f"batch_{n}",
                tenant="t",
                input_file_id=f"file-{n}",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                status=BatchStatus.IN_PROGRESS,
                created_at=now,
                expires_at=now,
            )
        )
        await session.flush()
        for line, status in enumerate([JobStatus.SUCCEEDED, JobStatus.QUEUED]):
            session.add(
                Job(
                    id=f"job_{n}_{line}",
                    tenant="t",
                    batch_id=f"batch_{n}",
                    line_no=line + 1,
                    model="m",
                    body={"messages": []},
                    status=status,
                    priority=5,
                    attempts=0,
                    max_attempts=3,
                )
            )
        await session.commit()
    return f"job_{n}_1"


async def _claim(db: Database, job_id: str) -> ClaimedJob:
    async with db.session() as session:
        (job,) = await claim(session, [job_id], "w1", 60)
    return job


async def _complete(db: Database, job: ClaimedJob) -> None:
    async with db.session() as session:
        assert await record_success(session, job, OUTCOME)
        await finalize_batch(session, job.batch_id or "")


async def _cancel(db: Database, batch_id: str) -> None:
    async with db.session() as session:
        batch = await session.get(Batch, batch_id)
        assert batch is not None
        try:
            await cancel_batch(session, batch)
        except InvalidRequest as exc:  # it completed first: 409 batch_not_cancellable
            assert exc.code == "batch_not_cancellable"


async def _statuses(db: Database) -> dict[str, BatchStatus]:
    async with db.session() as session:
        rows = (await session.execute(sa.select(Batch.id, Batch.status))).all()
    return {batch_id: BatchStatus(status) for batch_id, status in rows}


async def test_cancel_racing_completion_never_leaves_a_batch_open(db: Database) -> None:
    # Given hundreds of batches, each with its last line about to complete
    jobs = [await _batch_with_one_line_left(db, n) for n in range(RACES)]
    # When each is cancelled while its last line completes and the batch is finalized
    for n, job_id in enumerate(jobs):
        running = await _claim(db, job_id)
        await asyncio.gather(_complete(db, running), _cancel(db, f"batch_{n}"))
    # Then every batch ended, completed or cancelled, with no sweeper involved
    statuses = await _statuses(db)
    still_open = {b: s for b, s in statuses.items() if s not in TERMINAL_BATCH_STATUSES}
    assert still_open == {}
    assert set(statuses.values()) <= {BatchStatus.COMPLETED, BatchStatus.CANCELLED}


async def test_expiry_racing_completion_never_leaves_a_batch_open(db: Database) -> None:
    jobs = [await _batch_with_one_line_left(db, n) for n in range(RACES // 3)]

    async def expire(batch_id: str) -> None:
        async with db.session() as session:
            batch = await session.get(Batch, batch_id)
            assert batch is not None
            await expire_batch(session, batch)

    for n, job_id in enumerate(jobs):
        running = await _claim(db, job_id)
        await asyncio.gather(_complete(db, running), expire(f"batch_{n}"))
    statuses = await _statuses(db)
    assert set(statuses.values()) <= {BatchStatus.COMPLETED, BatchStatus.EXPIRED}


async def test_a_batch_left_cancelling_after_it_completed_is_repaired(db: Database) -> None:
    # Given a batch that completed, then was overwritten to cancelling by an unguarded
    # cancel (the state the issue found stuck forever)
    job_id = await _batch_with_one_line_left(db, 0)
    await _complete(db, await _claim(db, job_id))
    async with db.session() as session:
        await session.execute(
            sa.update(Batch).where(Batch.id == "batch_0").values(status=BatchStatus.CANCELLING)
        )
        await session.commit()
    # When the finalizer runs again (as the sweeper does for every open batch)
    async with db.session() as session:
        assert await finalize_batch(session, "batch_0")
    # Then the batch ends
    assert (await _statuses(db))["batch_0"] == BatchStatus.CANCELLED
