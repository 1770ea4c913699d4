"""Batch validation, after `POST /v1/batches` answered `validating` (as OpenAI does): the
input file's lines are read a page at a time, each parsed and checked, turned into jobs
(queued, or failed with their line's error) and published; then the batch goes
`in_progress`, or `failed` with OpenAI-shaped `errors` when the file as a whole cannot run.

The API starts it right after answering; the sweeper starts it for a batch left
`validating` (the API restarted). A Postgres advisory lock, held on the validator's own
connection for the whole run and dropped with it if the process dies, lets one validator
at a time work on a batch. Job ids are made from line numbers and each page commits
whole, so a validator that resumes skips the lines already stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import sqlalchemy as sa
import structlog
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from promptq.batch_input import ParsedLine, parse_line
from promptq.batches import fail_batch, finalize_batch, start_batch
from promptq.budgets import spent_now
from promptq.catalog import Catalog
from promptq.config import Settings
from promptq.db import Database
from promptq.errors import model_not_found_message
from promptq.estimate import Estimate, serving_entries
from promptq.jobs import JobErrorCode, store_lines
from promptq.models import Batch, BatchStatus, Budget, File, FileLine, Job, utcnow
from promptq.queues import queue_for, queue_step
from promptq.scheduler.dispatch import publish_marked

__all__ = ["Validation", "Validator", "validate_batch"]

log = structlog.get_logger(__name__)

_PAGE = 2000  # input lines read, checked and stored per transaction
_COLUMNS = (
    "id",
    "tenant",
    "batch_id",
    "line_no",
    "custom_id",
    "model",
    "body",
    "priority",
    "attempts",
    "max_attempts",
    "queue",
    "created_at",
    "enqueued_at",
    "finished_at",
    "error_code",
    "error_message",
    "api_key_id",
    "budget_id",
    "cache_opt_out",
)


@dataclass(frozen=True)
class Validation:
    """What validating a batch needs besides the batch: the models, how to publish, and
    the limits every line gets."""

    db: Database
    catalog: Catalog
    #: None: the lines are not published here, the sweeper sends them.
    celery: Celery | None
    chunk_size: int
    max_attempts: int
    default_completion_tokens: int

    @classmethod
    def from_settings(
        cls, settings: Settings, db: Database, catalog: Catalog, celery: Celery
    ) -> Validation:
        return cls(
            db,
            catalog,
            celery,
            settings.chunk_size,
            settings.max_attempts,
            settings.default_completion_tokens,
        )


@dataclass
class _Lines:
    """The per-line checks that depend on earlier lines (duplicate custom_ids) and the
    running estimate; one per validation run."""

    validation: Validation
    batch: Batch
    seen: set[str] = field(default_factory=set)
    estimate: Estimate = field(default_factory=Estimate)
    queued: int = 0

    def check(self, line: Any) -> ParsedLine:
        if line.error_code is not None:  # failed at upload (too long, or holds a NUL)
            return ParsedLine(
                raw=line.raw,
                custom_id=line.custom_id,
                error_code=line.error_code,
                error_message=line.error_message,
            )
        parsed, _ = parse_line(line.raw)
        if parsed.error_code is None and parsed.custom_id in self.seen:
            return ParsedLine(
                raw=parsed.raw,
                custom_id=parsed.custom_id,
                error_code="duplicate_custom_id",
                error_message=f"custom_id {parsed.custom_id!r} appears on an earlier line.",
            )
        if parsed.error_code is None and parsed.custom_id is not None:
            self.seen.add(parsed.custom_id)
        return parsed

    def row(self, line: Any, now: Any) -> tuple[bool, tuple[Any, ...]]:
        """The job row of one line, counted in the estimate when it can run."""
        parsed = self.check(line)
        batch, catalog = self.batch, self.validation.catalog
        code, message, queue = parsed.error_code, parsed.error_message, None
        entries = None
        if code is None and parsed.url != batch.endpoint:
            code = JobErrorCode.INVALID_URL.value
            message = f"url does not match the batch endpoint {batch.endpoint}."
        elif code is None and parsed.model is not None:
            entries = serving_entries(catalog, parsed.model)
            if entries is None:
                code = JobErrorCode.MODEL_NOT_FOUND.value
                message = model_not_found_message(parsed.model)
        if code is None and entries and parsed.model is not None and parsed.body is not None:
            # A router's lines go to the queue of its first candidate (same workers).
            router = catalog.routers.get(parsed.model)
            first = catalog[router.candidates[0]] if router else entries[0]
            queue = queue_for(first)
            self.estimate.add(
                parsed.model, entries, parsed.body, self.validation.default_completion_tokens
            )
            self.queued += 1
        refused = code is not None
        return refused, (
            f"job_{batch.id.removeprefix('batch_')}_{line.line_no}",
            batch.tenant,
            batch.id,
            line.line_no,
            parsed.custom_id,
            parsed.model,
            parsed.body,
            batch.priority,
            0,
            self.validation.max_attempts,
            queue,
            batch.created_at,
            None if refused else now,  # marked enqueued: its page is published on commit
            now if refused else None,
            code,
            message,
            batch.api_key_id,
            batch.budget_id,
            batch.cache_opt_out,
        )


async def validate_batch(validation: Validation, batch_id: str) -> bool:
    """Validate a batch left `validating`, unless another validator holds it; returns
    whether this call worked on it (False: held elsewhere, or no longer validating)."""
    async with validation.db.engine.connect() as conn:
        if not await _lock(conn, batch_id):
            return False
        try:
            async with AsyncSession(bind=conn, expire_on_commit=False) as session:
                return await _validate(session, validation, batch_id)
        finally:
            await _unlock(conn, batch_id)


async def _lock(conn: AsyncConnection, batch_id: str) -> bool:
    if conn.dialect.name != "postgresql":  # SQLite: one process, one writer
        return True
    got = await conn.scalar(sa.select(sa.func.pg_try_advisory_lock(_lock_key(batch_id))))
    await conn.commit()
    return bool(got)


async def _unlock(conn: AsyncConnection, batch_id: str) -> None:
    if conn.dialect.name != "postgresql":
        return
    try:
        await conn.rollback()
        await conn.execute(sa.select(sa.func.pg_advisory_unlock(_lock_key(batch_id))))
        await conn.commit()
    except Exception:  # the connection is broken: closing it drops the lock
        await conn.invalidate()
        raise


def _lock_key(batch_id: str) -> sa.ColumnElement[int]:
    return sa.func.hashtextextended(sa.literal(f"promptq.validate:{batch_id}"), 0)


async def _validate(session: AsyncSession, validation: Validation, batch_id: str) -> bool:
    batch = await session.get(Batch, batch_id, populate_existing=True)
    if batch is None or batch.status is not BatchStatus.VALIDATING:
        await session.rollback()
        return False
    if await session.get(File, batch.input_file_id) is None:
        await fail_batch(session, batch, "invalid_file", "The input file no longer exists.")
        return True
    log.info("batch.validating", batch_id=batch_id)
    problem = await _refusal(session, validation, batch)
    if problem is not None:
        await fail_batch(session, batch, *problem)
        return True
    lines = _Lines(validation, batch)
    done = await session.scalar(sa.select(sa.func.max(Job.line_no)).where(Job.batch_id == batch.id))
    # Each page is parsed (in a thread) while the one before it is stored.
    page = await _page(session, batch.input_file_id, 0)
    parsing = _parse(lines, page)
    while page:
        rows = await parsing
        page = await _page(session, batch.input_file_id, page[-1].line_no)
        parsing = _parse(lines, page)
        fresh = [row for row in rows if done is None or row[1][3] > done]
        if fresh and not await _store(session, validation, batch, fresh):
            parsing.cancel()
            log.info("batch.validation_stopped", batch_id=batch_id)
            return True  # cancelled or expired meanwhile
    await start_batch(session, batch, lines.queued, lines.estimate.max_cost_usd)
    log.info("batch.validated", batch_id=batch_id, status=str(batch.status))
    await finalize_batch(session, batch.id)
    return True


async def _page(session: AsyncSession, file_id: str, after: int) -> Sequence[Any]:
    # Rows, not ORM objects: a page is read once, and never kept in the session.
    stmt = (
        sa.select(
            FileLine.line_no,
            FileLine.raw,
            FileLine.custom_id,
            FileLine.error_code,
            FileLine.error_message,
        )
        .where(FileLine.file_id == file_id, FileLine.line_no > after)
        .order_by(FileLine.line_no)
        .limit(_PAGE)
    )
    return (await session.execute(stmt)).all()


def _rows(lines: _Lines, page: Sequence[Any]) -> list[tuple[bool, tuple[Any, ...]]]:
    now = utcnow()
    return [lines.row(line, now) for line in page]


def _parse(
    lines: _Lines, page: Sequence[Any]
) -> asyncio.Future[list[tuple[bool, tuple[Any, ...]]]]:
    # Pages are parsed one at a time, in order: `lines` keeps the custom_ids seen so far.
    return asyncio.ensure_future(anyio.to_thread.run_sync(_rows, lines, page))


async def _store(
    session: AsyncSession,
    validation: Validation,
    batch: Batch,
    rows: list[tuple[bool, tuple[Any, ...]]],
) -> bool:
    """Store one page's jobs if the batch is still validating (its row is share-locked, so
    a cancel waits for the page and then ends its queued lines), then publish them."""
    batch_id, priority = batch.id, batch.priority
    status = await session.scalar(
        sa.select(Batch.status).where(Batch.id == batch_id).with_for_update(read=True)
    )
    if status is not BatchStatus.VALIDATING:
        await session.rollback()
        return False
    await store_lines(session, _COLUMNS, rows)
    await session.commit()
    if validation.celery is not None:
        step = queue_step(priority, interactive=False)
        queued = [(row[0], row[10], step, False) for refused, row in rows if not refused]
        await publish_marked(session, validation.celery, queued, validation.chunk_size)
    return True


async def _refusal(
    session: AsyncSession, validation: Validation, batch: Batch
) -> tuple[str, str] | None:
    """Why the batch as a whole is refused before any line is stored: over its
    `max_cost_usd`, or a budget that cannot pay even its cheapest line. Needs the whole
    file's estimate first, so it reads the file once more only when either applies."""
    budget = await session.get(Budget, batch.budget_id) if batch.budget_id else None
    limited = budget is not None and budget.budget_usd is not None
    if batch.max_cost_usd is None and not limited:
        return None
    lines = _Lines(validation, batch)
    after = 0
    while page := await _page(session, batch.input_file_id, after):
        after = page[-1].line_no
        await anyio.to_thread.run_sync(_rows, lines, page)
    estimate = lines.estimate
    if batch.max_cost_usd is not None and estimate.max_cost_usd > batch.max_cost_usd:
        return (
            "estimate_too_high",
            f"The batch may cost up to {estimate.max_cost_usd:.6f} USD, more than "
            f"max_cost_usd {batch.max_cost_usd.normalize()}.",
        )
    cheapest = estimate.cheapest_line_usd
    if budget is not None and budget.budget_usd is not None and cheapest is not None:
        spent = spent_now(budget)
        if spent + cheapest > budget.budget_usd:
            return (
                "budget_exceeded",
                f"The budget of this key is exhausted: spent {spent:.6f} of "
                f"{budget.budget_usd:.6f} USD this {budget.period.value} period; the "
                f"cheapest line may cost up to {cheapest:.6f} USD.",
            )
    return None


class Validator:
    """Runs validations as tasks of this process: one per batch, at most `limit` at once.
    A task cancelled at shutdown leaves its batch `validating` for the sweeper."""

    def __init__(
        self,
        validation: Validation,
        limit: int = 2,
        on_validated: Callable[[], None] | None = None,
    ) -> None:
        self.validation = validation
        self._gate = asyncio.Semaphore(limit)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._on_validated = on_validated  # called for each batch this validator worked on

    def start(self, batch_id: str) -> None:
        """Validate `batch_id` in the background, unless this process already does."""
        if batch_id not in self._tasks:
            self._tasks[batch_id] = asyncio.create_task(self._run(batch_id))

    async def _run(self, batch_id: str) -> None:
        try:
            async with self._gate:
                if await validate_batch(self.validation, batch_id) and self._on_validated:
                    self._on_validated()
        except Exception:  # the batch stays validating; the sweeper tries again
            log.exception("batch.validation_failed", batch_id=batch_id)
        finally:
            self._tasks.pop(batch_id, None)

    async def close(self) -> None:
        """Cancel the running validations (their batches resume elsewhere)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
