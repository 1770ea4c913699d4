"""Batches: stored `validating` when created, their lines turned into jobs after the request
answered (promptq.scheduler.validation); counts, usage and the output and error files are
derived from their jobs.

Every write of `batches.status` is here: create (validating), the end of validation
(in_progress, or failed with `errors`), cancel (cancelling), expire (finalizing until
running lines end) and finalize (completed, cancelled or expired). Their lines' job
transitions are in promptq.jobs.transitions."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.errors import InvalidRequest
from promptq.ids import new_id
from promptq.jobs import cancel_lines, expire_lines
from promptq.models import (
    OPEN_JOB_STATUSES,
    Batch,
    BatchStatus,
    File,
    FilePurpose,
    Job,
    JobStatus,
    utcnow,
)
from promptq.views import BatchSummary, batch_out, summarize
from promptq.webhooks import emit

__all__ = [
    "cancel_batch",
    "create_batch",
    "expire_batch",
    "fail_batch",
    "finalize_batch",
    "parse_window",
    "start_batch",
]

_WINDOW = re.compile(r"([0-9]{1,9})([smhd])")  # ASCII digits, few enough for int()
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: A batch whose lines may still start: cancel and expiry apply to these only.
_RUNNING = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
#: Open batches the finalizer may end (once no line is open).
_FINALIZABLE = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)


def parse_window(window: str) -> timedelta:
    """`24h`, `30m`, `7d` ... as a duration; 400 `invalid_completion_window` otherwise."""
    match = _WINDOW.fullmatch(window)
    if not match or int(match.group(1)) == 0:
        raise InvalidRequest(
            "invalid_completion_window",
            "completion_window must look like '24h' (a number and s, m, h or d).",
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > 30 * 86400:
        raise InvalidRequest("invalid_completion_window", "completion_window is at most 30d.")
    return timedelta(seconds=seconds)


async def create_batch(session: AsyncSession, batch: Batch) -> Batch:
    """Store a new batch as `validating` (commits): its lines are read, checked and turned
    into jobs after the request answered (promptq.scheduler.validation)."""
    batch.status = BatchStatus.VALIDATING
    session.add(batch)
    await session.commit()
    return batch


async def _leave_validating(session: AsyncSession, batch: Batch, **values: Any) -> bool:
    # Guarded: a batch cancelled or expired while it was validating keeps that state.
    moved = await session.execute(
        sa.update(Batch)
        .where(Batch.id == batch.id, Batch.status == BatchStatus.VALIDATING)
        .values(**values)
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    )
    won = moved.first() is not None
    await session.commit()
    await session.refresh(batch)
    return won


async def start_batch(
    session: AsyncSession, batch: Batch, runnable: int, estimated_cost_usd: Decimal | None
) -> bool:
    """Validation is done: `in_progress` if any line can run, else `failed` with
    `no_valid_lines` (every line is in the error file). Commits; False if the batch left
    `validating` meanwhile."""
    now = utcnow()
    if runnable:
        return await _leave_validating(
            session,
            batch,
            status=BatchStatus.IN_PROGRESS,
            in_progress_at=now,
            estimated_cost_usd=estimated_cost_usd,
        )
    return await fail_batch(session, batch, "no_valid_lines", "No line of the file can run.")


async def fail_batch(session: AsyncSession, batch: Batch, code: str, message: str) -> bool:
    """The file as a whole cannot run: the batch ends `failed` with OpenAI-shaped `errors`
    (lines already stored, if any, end in its error file). False if it left `validating`."""
    error = {"code": code, "message": message, "param": None, "line": None}
    won = await _leave_validating(
        session, batch, status=BatchStatus.FAILED, failed_at=utcnow(), errors=[error]
    )
    if won:
        await cancel_lines(session, batch.id)  # none queued unless validation stopped midway
        await session.commit()
        await finalize_batch(session, batch.id)
    return won


async def finalize_batch(session: AsyncSession, batch_id: str) -> bool:
    """If no job of the batch is open, move it to its final state, make its files and queue
    its webhook event, all in one transaction.

    An EXISTS first, so a batch with open jobs costs one cheap query; then a guarded
    UPDATE: of two workers finishing the last jobs at once, one finalizes."""
    open_job = sa.select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(OPEN_JOB_STATUSES))
    if await session.scalar(sa.select(open_job.exists())):
        return False
    now = utcnow()
    # Whoever gets the row first finalizes; the others then find it ended. A batch not
    # finalized yet, or one still open (finalizing, cancelling or in progress) although
    # finalized before: an open batch whose jobs are all done always ends here, whatever
    # raced it (the sweeper calls this for every open batch: the repair).
    won = await session.execute(
        sa.update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.status != BatchStatus.VALIDATING,  # more lines may come
            sa.or_(Batch.finalizing_at.is_(None), Batch.status.in_(_FINALIZABLE)),
        )
        .values(finalizing_at=sa.func.coalesce(Batch.finalizing_at, now))
        .execution_options(synchronize_session=False)
    )
    batch = await session.get(Batch, batch_id, populate_existing=True)
    if batch is None or won.rowcount != 1:  # type: ignore[attr-defined]
        await session.rollback()
        return False
    summary = await summarize(session, batch_id)
    final = {
        BatchStatus.IN_PROGRESS: BatchStatus.COMPLETED,
        # An expired batch waits in finalizing for its running lines, then ends expired.
        BatchStatus.FINALIZING: BatchStatus.EXPIRED if batch.expired_at else BatchStatus.COMPLETED,
        BatchStatus.CANCELLING: BatchStatus.CANCELLED,
    }.get(batch.status, batch.status)
    succeeded = summary.counts.get(JobStatus.SUCCEEDED, 0)
    failed = summary.total - succeeded
    batch.output_file_id = _result_file(session, batch, FilePurpose.BATCH_OUTPUT, succeeded)
    batch.error_file_id = _result_file(session, batch, FilePurpose.BATCH_ERROR, failed)
    if final is not batch.status:
        batch.status = final
        if final is BatchStatus.COMPLETED:
            batch.completed_at = now
        elif final is BatchStatus.CANCELLED:
            batch.cancelled_at = now
    if batch.webhook_url:
        _emit_final(session, batch, summary)
    await session.commit()
    return True


def _emit_final(session: AsyncSession, batch: Batch, summary: BatchSummary) -> None:
    # batch.completed, batch.cancelled, batch.expired or batch.failed.
    emit(
        session,
        tenant=batch.tenant,
        event_type=f"batch.{batch.status}",
        url=batch.webhook_url or "",
        data=batch_out(batch, summary).model_dump(mode="json"),
    )


def _result_file(
    session: AsyncSession, batch: Batch, purpose: FilePurpose, lines: int
) -> str | None:
    if lines == 0:
        return None
    suffix = "output" if purpose is FilePurpose.BATCH_OUTPUT else "error"
    file = File(
        id=new_id("file-"),
        tenant=batch.tenant,
        purpose=purpose,
        batch_id=batch.id,
        filename=f"{batch.id}_{suffix}.jsonl",
        line_count=lines,
    )
    session.add(file)
    return file.id


async def cancel_batch(session: AsyncSession, batch: Batch) -> Batch:
    """Cancel: queued lines end `batch_cancelled`, running ones finish; results are kept.
    Cancelling a cancelled batch returns it; one that ended otherwise is 409.

    A guarded UPDATE (`WHERE status IN (validating, in_progress)`): a cancel that lands
    as the batch completes either wins, and the finalizer ends the batch cancelled, or
    finds it completed and is refused; it never overwrites a final state."""
    moved = await session.execute(
        sa.update(Batch)
        .where(Batch.id == batch.id, Batch.status.in_(_RUNNING))
        .values(status=BatchStatus.CANCELLING, cancelling_at=utcnow())
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    )
    if moved.first() is not None:
        await cancel_lines(session, batch.id)
        await session.commit()
        await finalize_batch(session, batch.id)
    else:
        await session.rollback()
    await session.refresh(batch)
    if batch.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        raise InvalidRequest(
            "batch_not_cancellable", f"A batch that is {batch.status} cannot be cancelled.", 409
        )
    return batch


async def expire_batch(session: AsyncSession, batch: Batch) -> None:
    """The completion window passed: queued lines end `batch_expired`, running ones finish,
    finished results are kept. Guarded like cancel: only a batch still running expires."""
    # The batch shows finalizing until its running lines are done, then expired.
    moved = await session.execute(
        sa.update(Batch)
        .where(Batch.id == batch.id, Batch.status.in_(_RUNNING))
        .values(status=BatchStatus.FINALIZING, expired_at=utcnow())
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    )
    if moved.first() is None:
        await session.rollback()
        return
    await expire_lines(session, batch.id)
    await session.commit()
    await finalize_batch(session, batch.id)
