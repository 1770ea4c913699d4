"""A running batch's counts are reused only when counting them was slow, and only for about
ten times what the count took; a finished batch is always counted afresh."""

from __future__ import annotations

from datetime import timedelta

import pytest

from promptq.api.batch_counts import BatchCounts
from promptq.db import Database
from promptq.models import Batch, BatchStatus, File, FilePurpose, Job, JobStatus, utcnow

pytestmark = pytest.mark.anyio


class SteppingClock:
    """Each reading is `step` seconds after the last: a count between two readings 'takes'
    `step` seconds."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def _batch_with_jobs(db: Database, jobs: int) -> Batch:
    now = utcnow()
    async with db.session() as session:
        session.add(File(id="f_in", tenant="t", purpose=FilePurpose.BATCH, filename="in.jsonl"))
        batch = Batch(
            id="b_1",
            tenant="t",
            input_file_id="f_in",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            status=BatchStatus.IN_PROGRESS,
            created_at=now,
            expires_at=now + timedelta(days=1),
        )
        session.add(batch)
        await session.flush()
        for n in range(jobs):
            session.add(_job(n, now))
        await session.commit()
    return batch


def _job(n: int, now: object) -> Job:
    return Job(
        id=f"b_1_j{n}",
        tenant="t",
        model="m",
        queue="q",
        body={"messages": []},
        batch_id="b_1",
        line_no=n,
        status=JobStatus.QUEUED,
        created_at=now,
    )


async def _add_job(db: Database, n: int) -> None:
    async with db.session() as session:
        session.add(_job(n, utcnow()))
        await session.commit()


async def _set_status(db: Database, status: BatchStatus) -> Batch:
    async with db.session() as session:
        batch = await session.get(Batch, "b_1")
        assert batch is not None
        batch.status = status
        await session.commit()
        return batch


async def test_a_slow_count_is_reused_for_ten_times_its_cost_while_the_batch_runs(
    db: Database,
) -> None:
    # Given a running batch of 3 lines, and counts that 'take' 0.5 s
    batch = await _batch_with_jobs(db, 3)
    clock = SteppingClock(0.5)
    counts = BatchCounts(clock=clock)
    async with db.session() as session:
        assert (await counts.summary(session, batch)).total == 3
    # When a line is added, a read within 5 s gets the kept count
    await _add_job(db, 3)
    async with db.session() as session:
        assert (await counts.summary(session, batch)).total == 3
        # And once 10 x 0.5 s have passed, a fresh one
        clock.now += 5
        assert (await counts.summary(session, batch)).total == 4
    # And a finished batch is counted afresh every time
    await _add_job(db, 4)
    finished = await _set_status(db, BatchStatus.COMPLETED)
    async with db.session() as session:
        assert (await counts.summary(session, finished)).total == 5


async def test_a_fast_count_is_never_reused(db: Database) -> None:
    # Given a running batch whose count takes no time
    batch = await _batch_with_jobs(db, 2)
    counts = BatchCounts(clock=SteppingClock(0.0))
    async with db.session() as session:
        assert (await counts.summary(session, batch)).total == 2
    # When a line is added, the next read sees it
    await _add_job(db, 2)
    async with db.session() as session:
        assert (await counts.summary(session, batch)).total == 3
