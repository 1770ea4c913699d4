"""Retention purges finished batches, jobs, old uploads and delivered webhook events, in
chunks, and nothing else: running work, recent results and the usage ledger stay."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from promptq.config import Settings
from promptq.db import Database
from promptq.models import (
    Batch,
    BatchStatus,
    File,
    FileLine,
    FilePurpose,
    IdempotencyKey,
    Job,
    JobStatus,
    UsageRecord,
    WebhookEvent,
    WebhookStatus,
    utcnow,
)
from promptq.retention import FileInUse, delete_file, purge

pytestmark = pytest.mark.anyio

NOW = utcnow()
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=2)


def _file(file_id: str, created: datetime, lines: int = 0, **extra: Any) -> list[object]:
    rows: list[object] = [
        File(
            id=file_id,
            tenant="t",
            purpose=extra.pop("purpose", FilePurpose.BATCH),
            filename=f"{file_id}.jsonl",
            created_at=created,
            line_count=lines,
            **extra,
        )
    ]
    rows += [FileLine(file_id=file_id, line_no=n, raw="{}") for n in range(lines)]
    return rows


def _batch(batch_id: str, status: BatchStatus, at: datetime, jobs: int) -> list[object]:
    done = {
        BatchStatus.COMPLETED: {"completed_at": at},
        BatchStatus.CANCELLED: {"cancelled_at": at},
        BatchStatus.IN_PROGRESS: {},
    }[status]
    rows: list[object] = [
        *_file(f"{batch_id}_in", OLD, lines=3),
        *_file(f"{batch_id}_out", at, purpose=FilePurpose.BATCH_OUTPUT, batch_id=batch_id),
        Batch(
            id=batch_id,
            tenant="t",
            input_file_id=f"{batch_id}_in",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            status=status,
            created_at=at - timedelta(hours=1),
            expires_at=at + timedelta(days=1),
            output_file_id=f"{batch_id}_out",
            **done,
        ),
    ]
    job_status = JobStatus.QUEUED if status is BatchStatus.IN_PROGRESS else JobStatus.SUCCEEDED
    for n in range(jobs):
        rows.append(_job(f"{batch_id}_j{n}", job_status, at, batch_id=batch_id, line_no=n))
    return rows


def _job(job_id: str, status: JobStatus, finished: datetime | None, **extra: Any) -> Job:
    terminal = status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    return Job(
        id=job_id,
        tenant="t",
        model="m",
        queue="q",
        status=status,
        created_at=(finished or OLD) - timedelta(minutes=5),
        finished_at=finished if terminal else None,
        **extra,
    )


def _event(event_id: str, status: WebhookStatus, created: datetime) -> WebhookEvent:
    return WebhookEvent(
        id=event_id,
        tenant="t",
        event_type="batch.completed",
        url="http://127.0.0.1/hook",
        payload={},
        status=status,
        created_at=created,
    )


def _usage(job_id: str) -> UsageRecord:
    return UsageRecord(
        job_id=job_id,
        attempt=1,
        tenant="t",
        model="m",
        prompt_tokens=3,
        completion_tokens=2,
        cost_usd=Decimal("0.01"),
    )


async def _store(db: Database, rows: list[object]) -> None:
    async with db.session() as session:
        for kind in (File, FileLine, Batch, Job, UsageRecord, WebhookEvent):
            session.add_all([r for r in rows if isinstance(r, kind)])
            await session.flush()
        await session.commit()


async def _ids(db: Database, column: Any) -> set[str]:
    async with db.session() as session:
        return set((await session.scalars(sa.select(column))).all())


@pytest.fixture
async def history(db: Database) -> Database:
    """Old and recent, finished and running work of every kind."""
    rows: list[object] = [
        *_batch("b_old", BatchStatus.COMPLETED, OLD, jobs=5),
        *_batch("b_old_cancelled", BatchStatus.CANCELLED, OLD, jobs=1),
        *_batch("b_recent", BatchStatus.COMPLETED, RECENT, jobs=2),
        *_batch("b_running", BatchStatus.IN_PROGRESS, OLD, jobs=2),
        *_file("f_old", OLD, lines=5),
        *_file("f_recent", RECENT, lines=1),
        _job("n_old", JobStatus.SUCCEEDED, OLD),
        _job("n_old_failed", JobStatus.FAILED, OLD),
        _job("n_recent", JobStatus.SUCCEEDED, RECENT),
        _job("n_queued", JobStatus.QUEUED, None),
        _job("n_running", JobStatus.RUNNING, None),
        _usage("b_old_j0"),
        _usage("n_old"),
        _usage("n_recent"),
        _event("e_delivered_old", WebhookStatus.DELIVERED, OLD),
        _event("e_failed_old", WebhookStatus.FAILED, OLD),
        _event("e_pending_old", WebhookStatus.PENDING, OLD),
        _event("e_delivered_recent", WebhookStatus.DELIVERED, RECENT),
    ]
    await _store(db, rows)
    return db


async def test_purge_removes_old_finished_work_and_keeps_the_rest(history: Database) -> None:
    # Given 30-day results, 10-day files, 7-day webhook events and chunks of 2 rows
    settings = Settings(result_retention_days=30, file_retention_days=10, retention_chunk_size=2)
    # When retention runs
    purged = await purge(history, settings)
    # Then old finished batches went with their jobs and output files, old finished native
    # jobs, old uploads no running batch reads, and old delivered or given-up events
    assert await _ids(history, Batch.id) == {"b_recent", "b_running"}
    assert await _ids(history, Job.id) == {
        "b_recent_j0",
        "b_recent_j1",
        "b_running_j0",
        "b_running_j1",
        "n_recent",
        "n_queued",
        "n_running",
    }
    assert await _ids(history, File.id) == {
        "b_recent_out",
        "b_running_in",
        "b_running_out",
        "f_recent",
    }
    assert await _ids(history, FileLine.file_id) == {"b_running_in", "f_recent"}
    assert await _ids(history, WebhookEvent.id) == {"e_pending_old", "e_delivered_recent"}
    # And the ledger kept every row, purged jobs' included
    assert await _ids(history, UsageRecord.job_id) == {"b_old_j0", "n_old", "n_recent"}
    assert purged == {
        "batches": 2,
        "file_lines": 5 + 3 + 3 + 3,
        "files": 2 + 4,
        "jobs": 6 + 2,
        "webhook_events": 2,
    }
    # And a second pass finds nothing left to purge
    assert await purge(history, settings) == {}


async def test_by_default_uploads_stay_until_deleted(history: Database) -> None:
    # Given the default settings (files until deleted, results 30 days)
    # When retention runs
    await purge(history, Settings())
    # Then every upload is still there, while old results went
    assert {"f_old", "f_recent", "b_old_in", "b_running_in"} <= await _ids(history, File.id)
    assert "b_old" not in await _ids(history, Batch.id)


async def test_zero_days_keeps_everything(history: Database) -> None:
    # Given retention turned off for every kind of row
    settings = Settings(result_retention_days=0, file_retention_days=0, webhook_retention_days=0)
    # When retention runs
    purged = await purge(history, settings)
    # Then nothing was removed
    assert purged == {}
    assert len(await _ids(history, Job.id)) == 10 + 5


async def test_a_file_a_running_batch_reads_cannot_be_deleted(history: Database) -> None:
    # Given the input file of a batch in progress, and an unused upload
    async with history.session() as session:
        running_input = await session.get(File, "b_running_in")
        unused = await session.get(File, "f_old")
    assert running_input is not None and unused is not None
    # When both are deleted
    with pytest.raises(FileInUse) as refused:
        await delete_file(history, running_input)
    await delete_file(history, unused, chunk=2)
    # Then the running batch's file and lines stay, the unused one is gone with its lines
    assert refused.value.batch_id == "b_running"
    files = await _ids(history, File.id)
    assert "b_running_in" in files and "f_old" not in files
    assert "f_old" not in await _ids(history, FileLine.file_id)


async def test_purge_forgets_idempotency_keys_past_their_time_to_live(history: Database) -> None:
    # Given a remembered answer from two days ago and one from a minute ago
    async with history.session() as session:
        for key, created in (("old", RECENT), ("fresh", NOW - timedelta(minutes=1))):
            session.add(
                IdempotencyKey(
                    tenant="t",
                    endpoint="POST /v1/jobs",
                    key=key,
                    request_hash="0" * 64,
                    status_code=200,
                    response={},
                    created_at=created,
                )
            )
        await session.commit()
    # When retention runs with a one-day time to live
    purged = await purge(history, Settings(idempotency_ttl_seconds=86400))
    # Then only the expired one is gone
    assert purged["idempotency_keys"] == 1
    assert await _ids(history, IdempotencyKey.key) == {"fresh"}
