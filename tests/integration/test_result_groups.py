"""Grouped result writes: the finished attempts of a group are stored in one transaction,
yet each job keeps its own guard. A late duplicate or a lost lease in a group costs only
that job; a group that cannot be stored leaves its jobs running, never finished without
their ledger row. On Postgres and on SQLite (the demo's database)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import sqlalchemy as sa

from promptq.db import Database
from promptq.jobs import JobFailure, claim, record_finished
from promptq.models import Job, JobStatus, UsageRecord, WebhookEvent
from promptq.workers.result_writer import ResultWriter
from tests.factories import claimed_jobs, outcome

pytestmark = pytest.mark.anyio


async def _jobs(db: Database) -> dict[str, Job]:
    async with db.session() as session:
        return {job.id: job for job in (await session.execute(sa.select(Job))).scalars()}


async def _ledger(db: Database) -> list[tuple[str, int]]:
    async with db.session() as session:
        rows = await session.execute(sa.select(UsageRecord.job_id, UsageRecord.attempt))
        return sorted((job_id, attempt) for job_id, attempt in rows)


async def _events(db: Database) -> list[tuple[str, str]]:
    async with db.session() as session:
        events = (await session.execute(sa.select(WebhookEvent))).scalars()
        return sorted((e.event_type, e.payload["data"]["id"]) for e in events)


async def test_a_group_stores_each_result_with_one_ledger_row(any_db: Database) -> None:
    # Given three running jobs
    jobs = await claimed_jobs(any_db, ["a", "b", "c"])
    # When their results are stored as one group
    async with any_db.session() as session:
        stored = await record_finished(
            session,
            [(jobs["a"], outcome("A")), (jobs["b"], outcome("B")), (jobs["c"], outcome("C"))],
        )
    # Then each job has its own result, and one ledger row
    assert stored == [True, True, True]
    final = await _jobs(any_db)
    assert {j: (final[j].status, final[j].content) for j in "abc"} == {
        "a": (JobStatus.SUCCEEDED, "A"),
        "b": (JobStatus.SUCCEEDED, "B"),
        "c": (JobStatus.SUCCEEDED, "C"),
    }
    assert all(final[j].lease_owner is None and final[j].finished_at for j in "abc")
    assert final["b"].response == {"object": "chat.completion", "content": "B"}
    assert final["b"].cost_usd == Decimal("0.0000015")
    assert await _ledger(any_db) == [("a", 1), ("b", 1), ("c", 1)]


async def test_a_late_duplicate_in_the_same_group_is_dropped(any_db: Database) -> None:
    # Given two running jobs
    jobs = await claimed_jobs(any_db, ["a", "b"])
    # When one group holds a result for each, and a second result for the first one
    async with any_db.session() as session:
        stored = await record_finished(
            session,
            [
                (jobs["a"], outcome("first")),
                (jobs["b"], outcome("B")),
                (jobs["a"], JobFailure("late", "a duplicate", 500)),
            ],
        )
    # Then the first result of the job counts, the duplicate changes nothing, billed once
    assert stored == [True, True, False]
    final = await _jobs(any_db)
    assert (final["a"].status, final["a"].content, final["a"].error_code) == (
        JobStatus.SUCCEEDED,
        "first",
        None,
    )
    assert await _ledger(any_db) == [("a", 1), ("b", 1)]


async def test_a_lost_lease_in_a_group_costs_only_that_job(any_db: Database) -> None:
    # Given three jobs claimed by w1 (with a webhook), one of which the sweeper re-queued
    # and w2 claimed again
    jobs = await claimed_jobs(any_db, ["a", "b", "c"], webhook_url="https://hooks.example/x")
    async with any_db.session() as session:
        await session.execute(sa.update(Job).where(Job.id == "b").values(status="queued"))
        await session.commit()
        (again,) = await claim(session, ["b"], "w2", 60)
    # When w1 stores its three results as one group (one of them a failure)
    async with any_db.session() as session:
        stored = await record_finished(
            session,
            [
                (jobs["a"], outcome("A")),
                (jobs["b"], outcome("stale")),
                (jobs["c"], JobFailure("provider_error", "refused", 400)),
            ],
        )
    # Then only the stale one is dropped: it stays running under w2's lease
    assert stored == [True, False, True]
    final = await _jobs(any_db)
    assert (final["a"].status, final["c"].status) == (JobStatus.SUCCEEDED, JobStatus.FAILED)
    assert (final["c"].error_code, final["c"].error_status) == ("provider_error", 400)
    assert (final["b"].status, final["b"].lease_owner, final["b"].content) == (
        JobStatus.RUNNING,
        "w2",
        None,
    )
    assert again.attempt == 2
    # And the ledger and the webhook outbox have rows for the stored jobs only
    assert await _ledger(any_db) == [("a", 1)]
    assert await _events(any_db) == [("job.failed", "c"), ("job.succeeded", "a")]


async def test_a_group_that_fails_to_commit_leaves_every_job_running(any_db: Database) -> None:
    # Given two running jobs, and a ledger row already there for the first one's attempt
    # (so the group's INSERT breaks the unique key after both UPDATEs matched)
    jobs = await claimed_jobs(any_db, ["a", "b"])
    async with any_db.session() as session:
        session.add(
            UsageRecord(
                job_id="a", attempt=1, tenant="t", model="m", prompt_tokens=0,
                completion_tokens=0, cost_usd=Decimal(0),
            )
        )  # fmt: skip
        await session.commit()
    # When the group is stored
    async with any_db.session() as session:
        with pytest.raises(sa.exc.IntegrityError):
            await record_finished(session, [(jobs["a"], outcome("A")), (jobs["b"], outcome("B"))])
    # Then neither job finished: no result without its ledger row
    final = await _jobs(any_db)
    assert [(final[j].status, final[j].content) for j in "ab"] == [(JobStatus.RUNNING, None)] * 2
    assert await _ledger(any_db) == [("a", 1)]


async def test_the_writer_groups_results_and_isolates_one_that_cannot_be_stored(
    any_db: Database,
) -> None:
    # Given a writer, three running jobs, and a ledger row already there for b's attempt
    jobs = await claimed_jobs(any_db, ["a", "b", "c"])
    async with any_db.session() as session:
        session.add(
            UsageRecord(
                job_id="b", attempt=1, tenant="t", model="m", prompt_tokens=0,
                completion_tokens=0, cost_usd=Decimal(0),
            )
        )  # fmt: skip
        await session.commit()
    writer = ResultWriter(any_db, max_delay=0.05, max_group=100)
    writer.start()
    # When the three finish at once
    results = await asyncio.gather(
        *(writer.write(jobs[j], outcome(j.upper())) for j in "abc"), return_exceptions=True
    )
    await writer.close()
    # Then the group failed as a whole, and was stored job by job: b alone is not stored
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert writer.counters["regrouped"] == 1
    final = await _jobs(any_db)
    assert [final[j].status for j in "abc"] == [
        JobStatus.SUCCEEDED,
        JobStatus.RUNNING,
        JobStatus.SUCCEEDED,
    ]
    assert await _ledger(any_db) == [("a", 1), ("b", 1), ("c", 1)]


async def test_the_writer_stores_results_that_finish_together_in_one_transaction(
    any_db: Database,
) -> None:
    # Given a writer and five running jobs
    jobs = await claimed_jobs(any_db, [f"j{i}" for i in range(5)])
    writer = ResultWriter(any_db, max_delay=0.05, max_group=100)
    writer.start()
    # When they finish at once, and one more after the writer closed
    stored = await asyncio.gather(*(writer.write(job, outcome("x")) for job in jobs.values()))
    await writer.close()
    late = await writer.write(jobs["j0"], outcome("late"))
    # Then they were stored as one group; the late duplicate on its own, and refused
    assert stored == [True] * 5 and late is False
    assert writer.counters == {"groups": 2, "stored": 5, "lost": 1, "regrouped": 0}
    assert len(await _ledger(any_db)) == 5
