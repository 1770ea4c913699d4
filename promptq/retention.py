"""Retention: what promptq forgets, and when.

- Finished batches older than `result_retention_days` go with their job rows and their
  output and error files; finished native jobs likewise (0 keeps them forever).
- Uploaded input files older than `file_retention_days` go with their lines, unless a
  batch still running reads them (0, the default: kept until `DELETE /v1/files/{id}`).
- Delivered or given-up webhook events older than `webhook_retention_days` go; pending
  ones never.
- The usage ledger is never purged: it is the bill.

Rows go in chunks of `retention_chunk_size`, one short transaction each, and rows a
worker holds locked are skipped (SKIP LOCKED) rather than waited for.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from promptq.config import Settings
from promptq.db import Database
from promptq.errors import InvalidRequest
from promptq.idempotency import delete_expired_keys
from promptq.metrics import PURGED
from promptq.models import (
    TERMINAL_BATCH_STATUSES,
    TERMINAL_JOB_STATUSES,
    Batch,
    File,
    FileLine,
    FilePurpose,
    Job,
    WebhookEvent,
    WebhookStatus,
    utcnow,
)

__all__ = ["FileInUse", "delete_file", "purge", "run_retention"]

log = structlog.get_logger(__name__)


class FileInUse(InvalidRequest):
    """The file is the input of a batch that has not finished (409 `file_in_use`)."""

    def __init__(self, batch_id: str) -> None:
        message = f"The file is the input of batch {batch_id}, which has not finished."
        super().__init__("file_in_use", message, 409)
        self.batch_id = batch_id


def _finished_at() -> sa.ColumnElement[datetime | None]:
    return sa.func.coalesce(
        Batch.completed_at, Batch.failed_at, Batch.expired_at, Batch.cancelled_at
    )


async def _delete_chunk(db: Database, key: InstrumentedAttribute[str], ids: sa.Select[Any]) -> int:
    async with db.session() as session:
        if not db.is_sqlite:
            ids = ids.with_for_update(skip_locked=True)
        result = await session.execute(
            sa.delete(key.class_)
            .where(key.in_(ids.scalar_subquery()))
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


async def _delete_in_chunks(
    db: Database, key: InstrumentedAttribute[str], ids: sa.Select[Any], chunk: int
) -> int:
    """Delete the rows `ids` selects, `chunk` at a time, until a chunk comes back short."""
    total = 0
    while True:
        deleted = await _delete_chunk(db, key, ids.limit(chunk))
        total += deleted
        if deleted < chunk:
            return total


async def _delete_file_rows(db: Database, file_id: str, chunk: int) -> tuple[int, int]:
    """A file's lines in chunks, then the file; returns (lines, files) deleted."""
    lines = 0
    while True:
        async with db.session() as session:
            upto = await session.scalar(
                sa.select(FileLine.line_no)
                .where(FileLine.file_id == file_id)
                .order_by(FileLine.line_no)
                .offset(chunk - 1)
                .limit(1)
            )
            stmt = sa.delete(FileLine).where(FileLine.file_id == file_id)
            if upto is not None:
                stmt = stmt.where(FileLine.line_no <= upto)
            result = await session.execute(stmt.execution_options(synchronize_session=False))
            await session.commit()
        lines += int(result.rowcount)  # type: ignore[attr-defined]
        if upto is None:
            break
    async with db.session() as session:
        result = await session.execute(sa.delete(File).where(File.id == file_id))
        await session.commit()
    return lines, int(result.rowcount)  # type: ignore[attr-defined]


async def _active_batch_reading(session: AsyncSession, file_id: str) -> str | None:
    return await session.scalar(
        sa.select(Batch.id)
        .where(Batch.input_file_id == file_id, Batch.status.not_in(TERMINAL_BATCH_STATUSES))
        .limit(1)
    )


async def delete_file(db: Database, file: File, chunk: int = 5000) -> None:
    """Delete an uploaded file and its lines, or a batch's output or error file (a view
    over its jobs: the jobs stay). Raises FileInUse while a running batch reads it."""
    if file.purpose == FilePurpose.BATCH:
        async with db.session() as session:
            batch_id = await _active_batch_reading(session, file.id)
        if batch_id is not None:
            raise FileInUse(batch_id)
    await _delete_file_rows(db, file.id, chunk)
    log.info("file.deleted", file_id=file.id, purpose=str(file.purpose))


async def _purge_batches(db: Database, cutoff: datetime, chunk: int, counts: Counter[str]) -> None:
    while True:
        async with db.session() as session:
            rows = (
                await session.execute(
                    sa.select(Batch.id, Batch.output_file_id, Batch.error_file_id)
                    .where(Batch.status.in_(TERMINAL_BATCH_STATUSES), _finished_at() < cutoff)
                    .limit(100)
                )
            ).all()
        for batch_id, *result_files in rows:
            ids = sa.select(Job.id).where(Job.batch_id == batch_id)
            counts["jobs"] += await _delete_in_chunks(db, Job.id, ids, chunk)
            for file_id in filter(None, result_files):
                counts["files"] += (await _delete_file_rows(db, file_id, chunk))[1]
            async with db.session() as session:
                result = await session.execute(sa.delete(Batch).where(Batch.id == batch_id))
                await session.commit()
            counts["batches"] += int(result.rowcount)  # type: ignore[attr-defined]
        if len(rows) < 100:
            return


async def _purge_input_files(
    db: Database, cutoff: datetime, chunk: int, counts: Counter[str]
) -> None:
    running = sa.select(Batch.input_file_id).where(Batch.status.not_in(TERMINAL_BATCH_STATUSES))
    async with db.session() as session:
        file_ids = (
            await session.scalars(
                sa.select(File.id).where(
                    File.purpose == FilePurpose.BATCH,
                    File.created_at < cutoff,
                    File.id.not_in(running),
                )
            )
        ).all()
    for file_id in file_ids:
        lines, files = await _delete_file_rows(db, file_id, chunk)
        counts["file_lines"] += lines
        counts["files"] += files


async def purge(db: Database, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Remove what the retention settings let go; returns rows removed per table."""
    now = now or utcnow()
    chunk = settings.retention_chunk_size
    counts: Counter[str] = Counter()
    if settings.result_retention_days:
        cutoff = now - timedelta(days=settings.result_retention_days)
        await _purge_batches(db, cutoff, chunk, counts)
        native = sa.select(Job.id).where(
            Job.batch_id.is_(None),
            Job.finished_at < cutoff,
            Job.status.in_(TERMINAL_JOB_STATUSES),
        )
        counts["jobs"] += await _delete_in_chunks(db, Job.id, native, chunk)
    if settings.file_retention_days:
        cutoff = now - timedelta(days=settings.file_retention_days)
        await _purge_input_files(db, cutoff, chunk, counts)
    if settings.webhook_retention_days:
        cutoff = now - timedelta(days=settings.webhook_retention_days)
        done = sa.select(WebhookEvent.id).where(
            WebhookEvent.status.in_([WebhookStatus.DELIVERED, WebhookStatus.FAILED]),
            WebhookEvent.created_at < cutoff,
        )
        counts["webhook_events"] += await _delete_in_chunks(db, WebhookEvent.id, done, chunk)
    async with db.session() as session:  # replays past their time to live (never served)
        counts["idempotency_keys"] += await delete_expired_keys(
            session, settings.idempotency_ttl_seconds
        )
    purged = {table: n for table, n in sorted(counts.items()) if n}
    for table, n in purged.items():
        PURGED.labels(table).inc(n)
    log.info("retention.purged", **purged)
    return purged


async def run_retention(db: Database, settings: Settings) -> None:
    """Purge every `retention_interval_seconds` (0: never), first at start-up."""
    if not settings.retention_interval_seconds:
        return
    while True:
        try:
            await purge(db, settings)
        except Exception as exc:  # the next pass retries; the scheduler keeps sweeping
            log.warning("retention.failed", error=str(exc))
        await asyncio.sleep(settings.retention_interval_seconds)
