"""Re-running the lines of a finished batch that got no result, as a new, linked batch."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.batches import create_batch
from promptq.errors import ApiError, InvalidRequest
from promptq.ids import new_id
from promptq.models import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    File,
    FileLine,
    FilePurpose,
    Job,
    JobStatus,
    utcnow,
)

__all__ = ["RETRIED_STATUSES", "retry_batch"]

#: Lines that ended without a result; lines that could not be parsed are not re-run,
#: they would fail the same way again.
RETRIED_STATUSES = (JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED)


async def _copy_lines(session: AsyncSession, source: Batch, file: File) -> int:
    """Copy the input lines of the source batch's unfinished jobs into `file`, renumbered."""
    # A line whose job has a body parsed: it can run again; the others would fail the same
    # way. The copies are checked again when the retry is validated.
    picked = (
        sa.select(FileLine, sa.func.row_number().over(order_by=FileLine.line_no).label("n"))
        .join(Job, sa.and_(Job.batch_id == source.id, Job.line_no == FileLine.line_no))
        .where(
            FileLine.file_id == source.input_file_id,
            Job.body.is_not(None),
            Job.status.in_(RETRIED_STATUSES),
        )
        .subquery()
    )
    columns = ["raw"]
    select = sa.select(
        sa.literal(file.id).label("file_id"),
        picked.c.n.label("line_no"),
        *[picked.c[c] for c in columns],
    )
    await session.execute(sa.insert(FileLine).from_select(["file_id", "line_no", *columns], select))
    count = await session.scalar(sa.select(sa.func.count()).where(FileLine.file_id == file.id))
    return int(count or 0)


async def _refuse_if_retry_open(session: AsyncSession, source: Batch) -> None:
    # FOR UPDATE waits for a concurrent retry's transaction to end; the query after it
    # then sees that retry (Postgres; SQLite has one writer at a time anyway).
    await session.execute(sa.select(Batch.id).where(Batch.id == source.id).with_for_update())
    open_retry = await session.scalar(
        sa.select(Batch.id)
        .where(Batch.retry_of == source.id, Batch.status.not_in(TERMINAL_BATCH_STATUSES))
        .order_by(Batch.created_at.desc())
        .limit(1)
    )
    if open_retry is not None:
        source_id = source.id  # read before the rollback expires the row
        await session.rollback()
        raise ApiError(
            "retry_in_progress",
            f"Batch {source_id} already has a retry in progress: {open_retry}. "
            "Retry again once it ends.",
            409,
            headers={"Location": f"/v1/batches/{open_retry}"},
        )


async def retry_batch(session: AsyncSession, source: Batch) -> Batch:
    """A new batch over the source's lines that got no result, linked by `retry_of`; it is
    `validating` until its lines are checked and queued (promptq.scheduler.validation).

    One retry at a time: the source row is locked for the transaction that creates the
    retry, so of concurrent retries one creates it and the others find it open (409
    `retry_in_progress`, naming it); a new retry is possible once it ends."""
    if source.status not in TERMINAL_BATCH_STATUSES:
        raise InvalidRequest(
            "batch_not_finished",
            f"Batch {source.id} is {source.status}; retry it once it ends.",
            409,
        )
    await _refuse_if_retry_open(session, source)
    file = File(
        id=new_id("file-"),
        tenant=source.tenant,
        purpose=FilePurpose.BATCH,
        filename=f"{source.id}_retry.jsonl",
    )
    session.add(file)
    await session.flush()
    lines = await _copy_lines(session, source, file)
    if lines == 0:
        message = f"Batch {source.id} has no line to re-run."
        await session.rollback()
        raise InvalidRequest("nothing_to_retry", message)
    file.line_count = lines
    file.bytes = int(
        await session.scalar(
            sa.select(sa.func.sum(sa.func.length(FileLine.raw) + 1)).where(
                FileLine.file_id == file.id
            )
        )
        or 0
    )
    now = utcnow()
    retry = Batch(
        id=new_id("batch_"),
        tenant=source.tenant,
        input_file_id=file.id,
        endpoint=source.endpoint,
        completion_window=source.completion_window,
        priority=source.priority,
        batch_metadata=source.batch_metadata,
        webhook_url=source.webhook_url,
        retry_of=source.id,
        api_key_id=source.api_key_id,
        budget_id=source.budget_id,
        cache_opt_out=source.cache_opt_out,
        created_at=now,
        expires_at=now + (source.expires_at - source.created_at),
    )
    return await create_batch(session, retry)
