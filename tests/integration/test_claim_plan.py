"""The claim reads the rows it names through the primary key, whatever the planner knows
about the jobs table: with a big batch half done and no statistics yet (a table that grew
faster than autovacuum's analyze), an index holding every queued job was ANDed with the
primary key, and each claim read every queued line's entry (BENCHMARKS.md, "scale").
The sweeper's delivery pass, on the same table, reads only the jobs it may send."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from promptq.db import Database
from promptq.jobs import claim
from promptq.models import Job, utcnow
from promptq.scheduler.dispatch import dispatch_queued
from tests.stack import create_database, drop_database

LINES = 40_000
DONE = 28_000  # lines finished before the claim, in line order as workers take them


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    url = create_database("promptq_plan")
    yield url
    drop_database(url)


@pytest.fixture
async def half_done_batch(fresh_pg_url: str) -> AsyncIterator[Database]:
    """A batch of LINES lines, DONE of them succeeded, the rest queued; the jobs table
    never analyzed (autovacuum off for it, so the statistics stay absent)."""
    db = Database(fresh_pg_url)
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
        await conn.execute(
            sa.text(
                "INSERT INTO batches (id, tenant, input_file_id, endpoint, completion_window,"
                " status, priority, created_at, expires_at) VALUES ('batch_plan', 't',"
                " 'file-plan', '/v1/chat/completions', '24h', 'in_progress', 5, now(),"
                " now() + interval '1 day')"
            )
        )
        await conn.execute(
            sa.text(
                "INSERT INTO jobs (id, tenant, batch_id, line_no, model, body, priority,"
                " status, attempts, max_attempts, queue, created_at, enqueued_at)"
                " SELECT 'job_' || i, 't', 'batch_plan', i, 'm', '{}', 5, 'queued', 0, 3,"
                " 'q', now(), now() FROM generate_series(1, :n) AS i"
            ),
            {"n": LINES},
        )
    async with db.engine.begin() as conn:
        for status in ("running", "succeeded"):
            await conn.execute(
                sa.text("UPDATE jobs SET status = :s WHERE line_no <= :done"),
                {"s": status, "done": DONE},
            )
    yield db
    await db.dispose()


def _index_names(plan: dict[str, Any]) -> set[str]:
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= _index_names(child)
    return names


@pytest.mark.anyio
async def test_a_claim_reads_its_jobs_by_primary_key_on_a_table_without_statistics(
    half_done_batch: Database,
) -> None:
    # Given a half-done batch whose table was never analyzed, and the ids of the next
    # 32 queued lines (a chunk as the dispatcher sends it)
    db = half_done_batch
    ids = [f"job_{i}" for i in range(DONE + 1, DONE + 33)]
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            statements.append((statement, parameters))

    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    # When a worker claims them
    async with db.session() as session:
        claimed = await claim(session, ids, "worker-1", 60)
    sa.event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    # Then it took all 32, with one statement whose plan reads jobs through the primary
    # key only (and the batch's row for its expiry)
    assert sorted(job.id for job in claimed) == sorted(ids)
    assert len(statements) == 1
    statement, parameters = statements[0]
    async with db.engine.connect() as conn:
        explained = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        plan = explained.scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    assert _index_names(plan[0]["Plan"]) == {"pk_jobs", "pk_batches"}


@pytest.mark.anyio
async def test_the_delivery_pass_reads_only_unsent_or_long_sent_jobs(
    half_done_batch: Database,
) -> None:
    # Given the half-done batch, its queued lines all sent a moment ago
    db = half_done_batch
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    # When the sweeper's delivery pass looks for unsent or long-sent jobs (it finds none,
    # so it publishes nothing)
    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    sweeper_cutoff = utcnow() - timedelta(seconds=1800)
    async with db.session() as session:
        published = await dispatch_queued(
            session,
            Celery(),
            32,
            sa.or_(Job.enqueued_at.is_(None), Job.enqueued_at < sweeper_cutoff),
            limit=20_000,
        )
    sa.event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    # Then its one query read the two partial indexes of queued jobs, not the queued lines
    assert published == 0
    assert len(statements) == 1
    statement, parameters = statements[0]
    async with db.engine.connect() as conn:
        explained = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        plan = explained.scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    assert _index_names(plan[0]["Plan"]) == {"ix_jobs_unsent", "ix_jobs_queued_enqueued_at"}
