"""Crash accounting against a real Postgres: each expired lease counts one loss on the jobs
it held; a job runs alone only once it was lost twice, so a stalled worker's jobs recover
in ordinary chunks while a job that keeps killing workers is isolated."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from promptq.db import Database
from promptq.jobs import claim, requeue_expired
from promptq.models import Job, JobStatus
from promptq.queues import runs_alone

pytestmark = pytest.mark.anyio


async def _add_jobs(db: Database, n: int) -> list[str]:
    ids = [f"job_{i}" for i in range(n)]
    async with db.session() as session:
        for job_id in ids:
            session.add(
                Job(
                    id=job_id,
                    tenant="t",
                    model="m",
                    queue="q",
                    body={"messages": []},
                    status=JobStatus.QUEUED,
                    priority=5,
                    attempts=0,
                    max_attempts=4,
                )
            )
        await session.commit()
    return ids


async def _lose(db: Database, ids: list[str]) -> None:
    """A worker claims `ids` and is lost: its leases expire, the sweeper requeues them."""
    async with db.session() as session:
        assert len(await claim(session, ids, "w-lost", -1)) == len(ids)  # already expired
        await requeue_expired(session)


async def _lost_counts(db: Database) -> dict[str, int]:
    async with db.session() as session:
        rows = (await session.execute(sa.select(Job.id, Job.lost_count, Job.status))).all()
    assert {r.status for r in rows} == {JobStatus.QUEUED}
    return {r.id: r.lost_count for r in rows}


async def test_a_job_lost_once_runs_with_others_and_one_lost_twice_runs_alone(
    db: Database,
) -> None:
    # Given 32 jobs in flight on a worker that stalls past its lease
    ids = await _add_jobs(db, 32)
    await _lose(db, ids)
    # Then each counts one loss, and none of them is isolated: recovery stays parallel
    counts = await _lost_counts(db)
    assert set(counts.values()) == {1}
    assert not any(runs_alone(n) for n in counts.values())
    # When one of them is in flight at a second loss (with three others)
    await _lose(db, ids[:4])
    # Then those four are suspects and run alone; the rest still run together
    counts = await _lost_counts(db)
    assert {job_id for job_id, n in counts.items() if runs_alone(n)} == set(ids[:4])
