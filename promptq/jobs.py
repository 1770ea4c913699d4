"""Job state transitions, each a guarded UPDATE: a late or repeated message cannot move a
finished job, and a result, its final state and its ledger row commit together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from promptq.api.schemas import job_out
from promptq.ledger import insert_usage_rows
from promptq.models import Job, JobStatus, utcnow
from promptq.webhooks import emit

__all__ = [
    "ClaimedJob",
    "Finished",
    "JobFailure",
    "JobOutcome",
    "bump_attempt",
    "claim",
    "emit_job_event",
    "record_failure",
    "record_finished",
    "record_success",
    "release",
    "renew_leases",
]


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds the lease on, for one attempt."""

    id: str
    tenant: str
    batch_id: str | None
    model: str
    body: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    owner: str
    webhook_url: str | None = None


@dataclass(frozen=True)
class JobFailure:
    """What a failed final attempt stores on the job: the backend's error."""

    code: str
    message: str
    status_code: int | None = None


@dataclass(frozen=True)
class JobOutcome:
    """What a finished attempt stores on the job and in the ledger."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    response: dict[str, Any]
    ttft_ms: float | None = None


#: A finished attempt: the job as claimed and what the attempt produced.
Finished = tuple[ClaimedJob, JobOutcome | JobFailure]


def _held(job: ClaimedJob) -> sa.ColumnElement[bool]:
    # The lease test: still running, same attempt, same owner.
    return sa.and_(
        Job.id == job.id,
        Job.status == JobStatus.RUNNING,
        Job.attempts == job.attempt,
        Job.lease_owner == job.owner,
    )


async def claim(
    session: AsyncSession, job_ids: Sequence[str], owner: str, lease_seconds: float
) -> list[ClaimedJob]:
    """Take the lease on those of `job_ids` that are still queued; the rest are skipped."""
    if not job_ids:
        return []
    now = utcnow()
    stmt = (
        sa.update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=sa.func.coalesce(Job.started_at, now),
        )
        .returning(
            Job.id,
            Job.tenant,
            Job.batch_id,
            Job.model,
            Job.body,
            Job.priority,
            Job.attempts,
            Job.max_attempts,
            Job.webhook_url,
        )
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(stmt)).all()
    await session.commit()
    return [
        ClaimedJob(
            id=r.id,
            tenant=r.tenant,
            batch_id=r.batch_id,
            model=r.model or "",
            body=r.body or {},
            priority=r.priority,
            attempt=r.attempts,
            max_attempts=r.max_attempts,
            owner=owner,
            webhook_url=r.webhook_url,
        )
        for r in rows
    ]


_JOBS: sa.Table = Job.__table__  # type: ignore[assignment]


def _param(column: str) -> sa.BindParameter[Any]:
    # A named parameter typed like its column (UTC timestamps, JSON), distinct from the
    # column's own name, which SQLAlchemy reserves in an UPDATE's SET clause.
    return sa.bindparam(f"p_{column}", type_=_JOBS.c[column].type)


# Built once: per job only the parameters change. The WHERE clause is the lease test.
_GUARDED = sa.update(_JOBS).where(
    _JOBS.c.id == sa.bindparam("p_held_id"),
    _JOBS.c.status == JobStatus.RUNNING,
    _JOBS.c.attempts == sa.bindparam("p_held_attempt"),
    _JOBS.c.lease_owner == sa.bindparam("p_held_owner"),
)
_FINAL_COLUMNS = ("finished_at", "error_code", "error_message", "error_status")
_RESULT_COLUMNS = (
    "content",
    "finish_reason",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "ttft_ms",
)
_SUCCEED = _GUARDED.values(
    status=JobStatus.SUCCEEDED,
    lease_owner=None,
    lease_expires_at=None,
    **{c: _param(c) for c in (*_FINAL_COLUMNS, *_RESULT_COLUMNS)},
)
_FAIL = _GUARDED.values(
    status=JobStatus.FAILED,
    lease_owner=None,
    lease_expires_at=None,
    **{c: _param(c) for c in _FINAL_COLUMNS},
)


def _final_update(
    job: ClaimedJob, result: JobOutcome | JobFailure, now: datetime
) -> tuple[sa.Update, dict[str, Any]]:
    params: dict[str, Any] = {
        "p_held_id": job.id,
        "p_held_attempt": job.attempt,
        "p_held_owner": job.owner,
        "p_finished_at": now,
    }
    if isinstance(result, JobFailure):
        params.update(
            p_error_code=result.code,
            p_error_message=result.message,
            p_error_status=result.status_code,
        )
        return _FAIL, params
    params.update(
        p_error_code=None,
        p_error_message=None,
        p_error_status=None,
        p_content=result.content,
        p_finish_reason=result.finish_reason,
        p_response=result.response,
        p_prompt_tokens=result.prompt_tokens,
        p_completion_tokens=result.completion_tokens,
        p_cost_usd=result.cost_usd,
        p_ttft_ms=result.ttft_ms,
    )
    return _SUCCEED, params


def _ledger_row(job: ClaimedJob, outcome: JobOutcome, now: datetime) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "tenant": job.tenant,
        "batch_id": job.batch_id,
        "model": job.model,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "cost_usd": outcome.cost_usd,
        "created_at": now,
    }


def _update_together(conn: sa.Connection, updates: list[tuple[sa.Update, dict[str, Any]]]) -> bool:
    # The guarded UPDATEs as one executemany per statement (psycopg sends them in a
    # pipeline: one round trip). Only the total row count comes back, so this tells just
    # whether every lease held; each UPDATE matches at most its one row.
    by_statement: dict[sa.Update, list[dict[str, Any]]] = {}
    for stmt, params in updates:
        by_statement.setdefault(stmt, []).append(params)
    matched = sum(conn.execute(stmt, rows).rowcount for stmt, rows in by_statement.items())
    return bool(matched == len(updates))


def _update_one_by_one(
    conn: sa.Connection, updates: list[tuple[sa.Update, dict[str, Any]]]
) -> list[bool]:
    # In the group's order: of two results for the same attempt only the first can match.
    return [conn.execute(stmt, params).rowcount == 1 for stmt, params in updates]


def _write_finished(session: Session, finished: Sequence[Finished]) -> list[bool]:
    # Synchronous, run in one greenlet: one guarded UPDATE per job, then the ledger rows of
    # the succeeded jobs whose UPDATE matched, in one INSERT.
    now = utcnow()
    updates = [_final_update(job, result, now) for job, result in finished]
    multi_rowcount = session.get_bind().dialect.supports_sane_multi_rowcount
    if multi_rowcount and _update_together(session.connection(), updates):
        stored = [True] * len(updates)
    else:  # a lease was lost (rare): undo, and find out which, one UPDATE at a time
        if multi_rowcount:
            session.rollback()
        stored = _update_one_by_one(session.connection(), updates)
    ledger = [
        _ledger_row(job, result, now)
        for (job, result), ok in zip(finished, stored, strict=True)
        if ok and isinstance(result, JobOutcome)
    ]
    insert_usage_rows(session.connection(), ledger)
    return stored


async def record_finished(session: AsyncSession, finished: Sequence[Finished]) -> list[bool]:
    """Store a group of finished attempts in one transaction: per job a guarded UPDATE to
    its final state (with the result), one INSERT of the ledger rows of the succeeded ones,
    the webhook events of those that have a webhook_url, one COMMIT. Returns, per item,
    whether it was stored (False: the lease was lost, e.g. re-queued, cancelled or already
    finished). On an error nothing is stored."""
    if not finished:
        return []
    stored = await session.run_sync(_write_finished, finished)
    announced = {
        job.id: "job.succeeded" if isinstance(result, JobOutcome) else "job.failed"
        for (job, result), ok in zip(finished, stored, strict=True)
        if ok and job.webhook_url
    }
    if announced:
        # The webhook commits with the final state: none for a result that did not commit.
        await _emit_job_events(session, announced)
    if any(stored):
        await session.commit()
    else:
        await session.rollback()
    return stored


async def record_success(session: AsyncSession, job: ClaimedJob, outcome: JobOutcome) -> bool:
    """Store the result, final state and ledger row in one transaction; False if the lease
    was lost (the job was re-queued, cancelled or finished elsewhere)."""
    return (await record_finished(session, [(job, outcome)]))[0]


async def record_failure(
    session: AsyncSession, job: ClaimedJob, code: str, message: str, status_code: int | None
) -> bool:
    """End the job as failed with the backend's error; False if the lease was lost."""
    return (await record_finished(session, [(job, JobFailure(code, message, status_code))]))[0]


async def _emit_job_events(session: AsyncSession, events: dict[str, str]) -> None:
    # `events`: job id -> event type, emitted in that order, with the job as now stored.
    rows = await session.scalars(
        sa.select(Job).where(Job.id.in_(events)).execution_options(populate_existing=True)
    )
    by_id = {row.id: row for row in rows}
    for job_id, event_type in events.items():
        row = by_id.get(job_id)
        if row is not None and row.webhook_url:
            data = job_out(row).model_dump(mode="json")
            emit(session, tenant=row.tenant, event_type=event_type, url=row.webhook_url, data=data)


async def emit_job_event(session: AsyncSession, job_id: str, event_type: str) -> None:
    """Queue `event_type` for the job's webhook (if it has one) in the session's transaction."""
    await _emit_job_events(session, {job_id: event_type})


async def bump_attempt(
    session: AsyncSession, job: ClaimedJob, lease_seconds: float, code: str, message: str
) -> ClaimedJob | None:
    """Count a retry as a new attempt under the same lease; None if the lease was lost."""
    stmt = (
        sa.update(Job)
        .where(_held(job))
        .values(
            attempts=Job.attempts + 1,
            lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
            error_code=code,
            error_message=message,
        )
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    await session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return ClaimedJob(**{**job.__dict__, "attempt": job.attempt + 1})


async def renew_leases(session: AsyncSession, owner: str, lease_seconds: float) -> int:
    """Heartbeat: extend the lease of every job this worker is running."""
    stmt = (
        sa.update(Job)
        .where(Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


async def release(session: AsyncSession, jobs: Sequence[ClaimedJob]) -> list[str]:
    """Give unfinished jobs back to the queue (a clean shutdown); returns the released ids."""
    released: list[str] = []
    for job in jobs:
        stmt = (
            sa.update(Job)
            .where(_held(job))
            .values(
                status=JobStatus.QUEUED,
                attempts=Job.attempts - 1,  # a clean hand-back is not a failed attempt
                lease_owner=None,
                lease_expires_at=None,
                enqueued_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        if (await session.execute(stmt)).rowcount == 1:  # type: ignore[attr-defined]
            released.append(job.id)
    await session.commit()
    return released
