"""Job state transitions, each a guarded UPDATE: a late or repeated message cannot move a
finished job, and a result, its final state and its ledger row commit together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.api.schemas import job_out
from promptq.models import Job, JobStatus, UsageRecord, utcnow
from promptq.webhooks import emit

__all__ = [
    "ClaimedJob",
    "JobOutcome",
    "bump_attempt",
    "claim",
    "emit_job_event",
    "record_failure",
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
class JobOutcome:
    """What a finished attempt stores on the job and in the ledger."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    response: dict[str, Any]
    ttft_ms: float | None = None


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


async def record_success(session: AsyncSession, job: ClaimedJob, outcome: JobOutcome) -> bool:
    """Store the result, final state and ledger row in one transaction; False if the lease
    was lost (the job was re-queued, cancelled or finished elsewhere)."""
    stmt = (
        sa.update(Job)
        .where(_held(job))
        .values(
            status=JobStatus.SUCCEEDED,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            content=outcome.content,
            finish_reason=outcome.finish_reason,
            response=outcome.response,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cost_usd=outcome.cost_usd,
            ttft_ms=outcome.ttft_ms,
            error_code=None,
            error_message=None,
            error_status=None,
        )
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        await session.rollback()
        return False
    session.add(
        UsageRecord(
            job_id=job.id,
            attempt=job.attempt,
            tenant=job.tenant,
            batch_id=job.batch_id,
            model=job.model,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cost_usd=outcome.cost_usd,
        )
    )
    await _emit_final(session, job, "job.succeeded")
    await session.commit()
    return True


async def record_failure(
    session: AsyncSession, job: ClaimedJob, code: str, message: str, status_code: int | None
) -> bool:
    """End the job as failed with the backend's error; False if the lease was lost."""
    stmt = (
        sa.update(Job)
        .where(_held(job))
        .values(
            status=JobStatus.FAILED,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            error_code=code,
            error_message=message,
            error_status=status_code,
        )
        .execution_options(synchronize_session=False)
    )
    stored = (await session.execute(stmt)).rowcount == 1  # type: ignore[attr-defined]
    if stored:
        await _emit_final(session, job, "job.failed")
    await session.commit()
    return bool(stored)


async def _emit_final(session: AsyncSession, job: ClaimedJob, event_type: str) -> None:
    # The webhook commits with the final state: none for a result that did not commit.
    if job.webhook_url:
        await emit_job_event(session, job.id, event_type)


async def emit_job_event(session: AsyncSession, job_id: str, event_type: str) -> None:
    """Queue `event_type` for the job's webhook (if it has one) in the session's transaction."""
    row = await session.get(Job, job_id, populate_existing=True)
    if row is not None and row.webhook_url:
        data = job_out(row).model_dump(mode="json")
        emit(session, tenant=row.tenant, event_type=event_type, url=row.webhook_url, data=data)


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
