"""Every write of a job's status, each one guarded statement (`... WHERE status IN (the
transition's sources)`), so a late or repeated message cannot move a finished job. A
transition that reports to clients writes its webhook event in its own transaction, and a
result commits with its final state and its ledger row. Nothing else in promptq writes
`jobs.status` (tests/unit/test_layers.py checks it).

The transitions are listed, with their states, events and codes, in
promptq/jobs/lifecycle.py; a new one goes there and into the section of its kind below:
new rows, delivery, the worker's attempt, the sweeper, cancel and expiry."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from promptq.budgets import settle_ended
from promptq.bulk_copy import copy_rows
from promptq.jobs.attempt import ClaimedJob, Finished, JobFailure, JobOutcome
from promptq.jobs.events import emit_job_events
from promptq.jobs.grouped import Guarded, run_guarded
from promptq.jobs.lifecycle import (
    CANCEL,
    CANCEL_LINES,
    CLAIM,
    CREATE_LINE,
    EXPIRE,
    EXPIRE_LINES,
    EXPIRE_QUEUED,
    FAIL,
    FAIL_LOST,
    MARK_ENQUEUED,
    REFUSE_LINE,
    RELEASE,
    RENEW,
    REQUEUE,
    RESEND,
    RETRY,
    SUBMIT,
    SUCCEED,
    WAIT,
    Transition,
)
from promptq.ledger import insert_usage_rows
from promptq.models import Batch, Job, status_is, utcnow

__all__ = [
    "cancel",
    "cancel_lines",
    "claim",
    "expire_lines",
    "expire_queued",
    "mark_enqueued",
    "note_waiting",
    "record_failure",
    "record_finished",
    "record_success",
    "release",
    "renew",
    "requeue_expired",
    "resend",
    "retry",
    "store_lines",
    "submit",
]

_JOBS: sa.Table = Job.__table__  # type: ignore[assignment]
_BATCHES: sa.Table = Batch.__table__  # type: ignore[assignment]


def _from(transition: Transition) -> sa.ColumnElement[bool]:
    # The guard of every statement: the job is in one of the transition's source states
    # (`=` for one: an IN list cannot be part of an executemany). A single state is a
    # constant, so the sweeper's lease check can use the partial index of running jobs.
    if len(transition.sources) == 1:
        return status_is(transition.sources[0])
    return _JOBS.c.status.in_(transition.sources)


def _update(transition: Transition) -> sa.Update:
    return sa.update(_JOBS).where(_from(transition))


async def _emit(session: AsyncSession, transition: Transition, rows: Sequence[Any]) -> None:
    # rows: (id, webhook_url) of the jobs the statement moved.
    if transition.event is not None:
        await emit_job_events(session, {r[0]: transition.event for r in rows if r[1]})


# -- new rows -----------------------------------------------------------------------------


def submit(session: AsyncSession, job: Job) -> Job:
    """SUBMIT: add a new native job, queued and marked enqueued (its message is sent right
    after the commit; if that fails, `resend` unmarks it for the sweeper)."""
    job.status = SUBMIT.target
    job.attempts = 0
    job.enqueued_at = job.created_at
    session.add(job)
    return job


async def store_lines(
    session: AsyncSession,
    columns: Sequence[str],
    rows: Iterable[tuple[bool, Sequence[Any]]],
) -> int:
    """CREATE_LINE / REFUSE_LINE: store batch lines as jobs in bulk (`COPY` on Postgres),
    from (refused, values of `columns` without status) rows: queued, or failed at once with
    their line's error. Returns how many."""
    statuses = {False: CREATE_LINE.target.value, True: REFUSE_LINE.target.value}
    values = ((*row, statuses[refused]) for refused, row in rows)
    return await copy_rows(session, _JOBS, [*columns, "status"], values)


# -- delivery -------------------------------------------------------------------------------


async def mark_enqueued(session: AsyncSession, job_ids: Sequence[str]) -> None:
    """MARK_ENQUEUED: record that the messages of these queued jobs were sent (commits)."""
    now = utcnow()
    for start in range(0, len(job_ids), 5000):
        await session.execute(
            _update(MARK_ENQUEUED)
            .where(_JOBS.c.id.in_(job_ids[start : start + 5000]))
            .values(enqueued_at=now)
        )
    await session.commit()


async def resend(session: AsyncSession, job_ids: Sequence[str] | None = None) -> int:
    """RESEND: forget that these queued jobs (all of them if None) were sent, so that the
    sweeper sends them again: Redis lost its data, or a publish failed (commits)."""
    stmt = _update(RESEND).values(enqueued_at=None)
    if job_ids is not None:
        stmt = stmt.where(_JOBS.c.id.in_(job_ids))
    result = await session.execute(stmt)
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


# -- the worker's attempt ------------------------------------------------------------------


def _held(job: ClaimedJob) -> sa.ColumnElement[bool]:
    # The lease test: same attempt, same owner (with the transition's status guard).
    return sa.and_(
        _JOBS.c.id == job.id,
        _JOBS.c.attempts == job.attempt,
        _JOBS.c.lease_owner == job.owner,
    )


async def claim(
    session: AsyncSession, job_ids: Sequence[str], owner: str, lease_seconds: float
) -> list[ClaimedJob]:
    """CLAIM: take the lease on those of `job_ids` that are still queued and whose own
    deadline has not passed; the rest are skipped (`expire_queued` ends the overdue ones)
    (commits)."""
    if not job_ids:
        return []
    now = utcnow()
    c = _JOBS.c
    stmt = (
        _update(CLAIM)
        .where(c.id.in_(job_ids), sa.or_(c.deadline_at.is_(None), c.deadline_at > now))
        .values(
            status=CLAIM.target,
            attempts=c.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=sa.func.coalesce(c.started_at, now),
        )
        .returning(
            c.id,
            c.tenant,
            c.batch_id,
            c.model,
            c.body,
            c.priority,
            c.attempts,
            c.max_attempts,
            c.webhook_url,
            c.custom_id,
            c.created_at,
            c.budget_id,
            c.cache_opt_out,
            c["metadata"].label("job_metadata"),
            # A native job's own deadline, else its batch's expiry.
            sa.func.coalesce(
                c.deadline_at,
                sa.select(_BATCHES.c.expires_at)
                .where(_BATCHES.c.id == c.batch_id)
                .scalar_subquery(),
            ).label("deadline"),
        )
    )
    rows = (await session.execute(stmt)).all()
    await session.commit()
    return [ClaimedJob.claimed(row, owner) for row in rows]


async def renew(
    session: AsyncSession, owner: str, job_ids: Sequence[str], lease_seconds: float
) -> int:
    """RENEW: the heartbeat extends the leases `owner` holds on `job_ids`, the jobs it is
    still running (commits). A job whose task ended without storing a result (a bug) is
    not among them: its lease runs out and the sweeper gives it another attempt."""
    if not job_ids:
        return 0
    result = await session.execute(
        _update(RENEW)
        .where(_JOBS.c.lease_owner == owner, _JOBS.c.id.in_(list(job_ids)))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


async def retry(
    session: AsyncSession, job: ClaimedJob, lease_seconds: float, code: str, message: str
) -> ClaimedJob | None:
    """RETRY: count a retry as a new attempt under the same lease, noting the error;
    None if the lease was lost (commits)."""
    result = await session.execute(
        _update(RETRY)
        .where(_held(job))
        .values(
            attempts=_JOBS.c.attempts + 1,
            lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
            error_code=code,
            error_message=message,
        )
    )
    await session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return job.next_attempt()


async def note_waiting(
    session: AsyncSession, notes: Sequence[tuple[ClaimedJob, str | None]]
) -> int:
    """WAIT: show why running jobs wait (rate_limited, circuit_open ...) or, with None,
    that they go on; one connection for all. Returns how many still held their lease.
    Each row commits on its own: holding several row locks at once would deadlock with
    the heartbeat, which renews the same rows in one statement."""
    moved = 0
    for job, reason in notes:
        result = await session.execute(
            _update(WAIT).where(_held(job)).values(waiting_reason=reason)
        )
        await session.commit()
        moved += int(result.rowcount)  # type: ignore[attr-defined]
    return moved


async def release(session: AsyncSession, jobs: Sequence[ClaimedJob]) -> list[str]:
    """RELEASE: give unfinished jobs back to the queue (a clean shutdown); a hand-back is
    not a failed attempt. Returns the released ids (commits)."""
    released: list[str] = []
    for job in jobs:
        stmt = (
            _update(RELEASE)
            .where(_held(job))
            .values(
                status=RELEASE.target,
                attempts=_JOBS.c.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
                enqueued_at=None,
                waiting_reason=None,
            )
        )
        if (await session.execute(stmt)).rowcount == 1:  # type: ignore[attr-defined]
            released.append(job.id)
    await session.commit()
    return released


def _param(column: str) -> sa.BindParameter[Any]:
    # A named parameter typed like its column (UTC timestamps, JSON), distinct from the
    # column's own name, which SQLAlchemy reserves in an UPDATE's SET clause.
    return sa.bindparam(f"p_{column}", type_=_JOBS.c[column].type)


def _finishing(transition: Transition, columns: Sequence[str]) -> sa.Update:
    # Built once: per job only the parameters change. The WHERE clause is the lease test.
    return (
        _update(transition)
        .where(
            _JOBS.c.id == sa.bindparam("p_held_id"),
            _JOBS.c.attempts == sa.bindparam("p_held_attempt"),
            _JOBS.c.lease_owner == sa.bindparam("p_held_owner"),
        )
        .values(
            status=transition.target,
            lease_owner=None,
            lease_expires_at=None,
            waiting_reason=None,
            **{c: _param(c) for c in columns},
        )
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
    "cached",
    "saved_usd",
    "served_by",
)
_SUCCEED = _finishing(SUCCEED, (*_FINAL_COLUMNS, *_RESULT_COLUMNS))
_FAIL = _finishing(FAIL, _FINAL_COLUMNS)
_EXPIRE = _finishing(EXPIRE, _FINAL_COLUMNS)


def _final_update(job: ClaimedJob, result: JobOutcome | JobFailure, now: datetime) -> Guarded:
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
            p_error_status=result.provider_status,
        )
        return (_EXPIRE if result.expired else _FAIL), params
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
        p_cached=result.cached,
        p_saved_usd=result.saved_usd,
        p_served_by=result.served_by,
    )
    return _SUCCEED, params


def _ledger_row(job: ClaimedJob, outcome: JobOutcome, now: datetime) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "tenant": job.tenant,
        "batch_id": job.batch_id,
        "model": outcome.served_by or job.model,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "cost_usd": outcome.cost_usd,
        "cached": outcome.cached,
        "saved_usd": outcome.saved_usd,
        "created_at": now,
    }


def _write_finished(session: Session, finished: Sequence[Finished]) -> list[bool]:
    # Synchronous, run in one greenlet: one guarded UPDATE per job, then the ledger rows of
    # the succeeded jobs whose UPDATE matched, in one INSERT.
    now = utcnow()
    stored = run_guarded(session, [_final_update(job, result, now) for job, result in finished])
    ledger = [
        _ledger_row(job, result, now)
        for (job, result), ok in zip(finished, stored, strict=True)
        if ok and isinstance(result, JobOutcome)
    ]
    insert_usage_rows(session.connection(), ledger)
    # Budget reservations are settled with the final states: no transaction of their own.
    budgeted = [
        (job.id, job.budget_id, result.cost_usd if isinstance(result, JobOutcome) else Decimal(0))
        for (job, result), ok in zip(finished, stored, strict=True)
        if ok and job.budget_id is not None
    ]
    if budgeted:
        settle_ended(session.connection(), budgeted, now)
    return stored


async def record_finished(session: AsyncSession, finished: Sequence[Finished]) -> list[bool]:
    """SUCCEED / FAIL / EXPIRE for a group of finished attempts in one transaction: per job
    a guarded UPDATE to its final state (with the result), one INSERT of the ledger rows of the
    succeeded ones, the settlement of their budget reservations, the webhook events of
    those that have a webhook_url, one COMMIT.
    Returns, per item, whether it was stored (False: the lease was lost, e.g. re-queued,
    cancelled or already finished). On an error nothing is stored."""
    if not finished:
        return []
    stored = await session.run_sync(_write_finished, finished)
    announced = {
        job.id: str(_transition_of(result).event)
        for (job, result), ok in zip(finished, stored, strict=True)
        if ok and job.webhook_url
    }
    # The webhook commits with the final state: none for a result that did not commit.
    await emit_job_events(session, announced)
    if any(stored):
        await session.commit()
    else:
        await session.rollback()
    return stored


def _transition_of(result: JobOutcome | JobFailure) -> Transition:
    if isinstance(result, JobOutcome):
        return SUCCEED
    return EXPIRE if result.expired else FAIL


async def record_success(session: AsyncSession, job: ClaimedJob, outcome: JobOutcome) -> bool:
    """SUCCEED: store the result, final state and ledger row in one transaction; False if
    the lease was lost (the job was re-queued, cancelled or finished elsewhere)."""
    return (await record_finished(session, [(job, outcome)]))[0]


async def record_failure(
    session: AsyncSession,
    job: ClaimedJob,
    code: str,
    message: str,
    provider_status: int | None = None,
) -> bool:
    """FAIL: end the job as failed with the backend's error; False if the lease was lost."""
    failure = JobFailure(code, message, provider_status)
    return (await record_finished(session, [(job, failure)]))[0]


# -- the sweeper ---------------------------------------------------------------------------


async def requeue_expired(session: AsyncSession) -> tuple[int, int]:
    """FAIL_LOST, then REQUEUE: jobs whose lease expired fail if that was their last
    attempt, else go back to the queue marked `worker_lost`, one more loss counted
    (`lost_count`): a job lost twice runs alone (promptq.queues.runs_alone), so a poison
    prompt costs only itself an attempt while a stalled worker's jobs recover in parallel.
    Returns (failed, requeued); commits."""
    now = utcnow()
    c = _JOBS.c
    expired = c.lease_expires_at < now
    failed = (
        await session.execute(
            _update(FAIL_LOST)
            .where(expired, c.attempts >= c.max_attempts)
            .values(
                status=FAIL_LOST.target,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error_code=FAIL_LOST.code,
                error_message="The job's worker was lost on every attempt "
                "(the job may crash its worker).",
            )
            .returning(c.id, c.webhook_url)
        )
    ).all()
    await _emit(session, FAIL_LOST, failed)
    requeued = await session.execute(
        _update(REQUEUE)
        .where(expired, c.attempts < c.max_attempts)
        .values(
            status=REQUEUE.target,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            lost_count=c.lost_count + 1,
            error_code=REQUEUE.code,
            error_message="Its worker was lost while running it.",
        )
    )
    await session.commit()
    return len(failed), int(requeued.rowcount)  # type: ignore[attr-defined]


# -- cancel and expiry ---------------------------------------------------------------------


async def cancel(session: AsyncSession, job_id: str) -> bool:
    """CANCEL: end a queued or running job as cancelled, drop its lease (a running attempt
    then cannot store its result) and emit `job.cancelled`; False if it had already
    finished (commits)."""
    c = _JOBS.c
    rows = (
        await session.execute(
            _update(CANCEL)
            .where(c.id == job_id)
            .values(
                status=CANCEL.target,
                finished_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
                error_code=CANCEL.code,
                error_message="The job was cancelled.",
            )
            .returning(c.id, c.webhook_url)
        )
    ).all()
    await _emit(session, CANCEL, rows)
    await session.commit()
    return bool(rows)


async def _end_queued_lines(
    session: AsyncSession, transition: Transition, batch_id: str, message: str
) -> int:
    # Lines not started yet end now; running ones are left to finish and keep their result.
    # Not committed: the batch's own change commits with it.
    c = _JOBS.c
    rows = (
        await session.execute(
            _update(transition)
            .where(c.batch_id == batch_id)
            .values(
                status=transition.target,
                finished_at=utcnow(),
                error_code=transition.code,
                error_message=message,
            )
            .returning(c.id, c.webhook_url)
        )
    ).all()
    await _emit(session, transition, rows)
    return len(rows)


async def cancel_lines(session: AsyncSession, batch_id: str) -> int:
    """CANCEL_LINES: the batch's queued lines end `batch_cancelled` (not committed)."""
    message = "The batch was cancelled before this request ran."
    return await _end_queued_lines(session, CANCEL_LINES, batch_id, message)


async def expire_lines(session: AsyncSession, batch_id: str) -> int:
    """EXPIRE_LINES: the batch's queued lines end `batch_expired` (not committed)."""
    message = "The batch's completion window ended before this request ran."
    return await _end_queued_lines(session, EXPIRE_LINES, batch_id, message)


#: Overdue queued jobs expired per statement: each chunk commits on its own, so no
#: statement holds many row locks for long.
EXPIRE_CHUNK = 500


async def expire_queued(
    session: AsyncSession, *, job_ids: Sequence[str] | None = None, limit: int = EXPIRE_CHUNK
) -> list[tuple[str, str | None]]:
    """EXPIRE_QUEUED: queued native jobs whose deadline passed (among `job_ids`, or any)
    end `expired` with `deadline_exceeded`, at most `limit` of them, rows another
    transaction holds skipped; they used no attempt and reserved nothing. Emits
    `job.expired`; returns the (id, model) of those it moved (commits)."""
    c = _JOBS.c
    now = utcnow()
    # The literal status lets Postgres use the partial index of queued jobs' deadlines.
    due = (
        sa.select(c.id)
        .where(c.status == sa.literal_column(f"'{EXPIRE_QUEUED.sources[0].value}'"))
        .where(c.deadline_at < now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if job_ids is not None:
        due = due.where(c.id.in_(list(job_ids)))
    rows = (
        await session.execute(
            _update(EXPIRE_QUEUED)
            .where(c.id.in_(due.scalar_subquery()))
            .values(
                status=EXPIRE_QUEUED.target,
                finished_at=now,
                error_code=EXPIRE_QUEUED.code,
                error_message="The job's deadline passed before a worker could start it "
                "(it waited: queued).",
            )
            .returning(c.id, c.webhook_url, c.model)
        )
    ).all()
    await _emit(session, EXPIRE_QUEUED, rows)
    await session.commit()
    return [(row.id, row.model) for row in rows]
