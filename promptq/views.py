"""What clients see of jobs, batches and files: the response bodies of the API and the
data of webhook events, made from rows. A domain module, so that the transitions that
emit events and the routes that answer requests describe a job the same way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.models import OPEN_JOB_STATUSES, Batch, File, Job, JobStatus

__all__ = [
    "BatchErrors",
    "BatchOut",
    "BatchSummary",
    "BatchUsage",
    "FileOut",
    "JobError",
    "JobOut",
    "JobResult",
    "Usage",
    "batch_out",
    "file_out",
    "job_out",
    "summarize",
    "summarize_many",
]


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


# -- jobs -------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class JobResult(BaseModel):
    content: str | None
    finish_reason: str | None


class JobError(BaseModel):
    """Why a job has no result: its `error_code` (see docs/errors.md) and message."""

    code: str
    message: str


class JobOut(BaseModel):
    """A job as a client polls it."""

    id: str
    object: Literal["job"] = "job"
    model: str | None
    status: str
    priority: int
    batch_id: str | None
    custom_id: str | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    attempts: int
    max_attempts: int
    result: JobResult | None
    usage: Usage | None
    cost_usd: float | None
    ttft_ms: float | None
    #: Why a running job waits instead of calling its provider: rate_limited,
    #: circuit_open, concurrency (None when it is not waiting).
    waiting_reason: str | None = None
    #: The model that served the job (a fallback's name when one did).
    served_by: str | None = None
    #: The job's deadline (unix seconds), if it was given one.
    deadline_at: int | None = None
    error: JobError | None
    metadata: dict[str, Any] | None
    cached: bool = False
    saved_usd: float | None = None


def job_out(job: Job) -> JobOut:
    """The response body (and webhook data) for a job row."""
    done = job.status == JobStatus.SUCCEEDED
    usage = None
    if job.prompt_tokens is not None and job.completion_tokens is not None:
        usage = Usage(
            prompt_tokens=job.prompt_tokens,
            completion_tokens=job.completion_tokens,
            total_tokens=job.prompt_tokens + job.completion_tokens,
        )
    return JobOut(
        id=job.id,
        model=job.model,
        status=job.status,
        priority=job.priority,
        batch_id=job.batch_id,
        custom_id=job.custom_id,
        created_at=_ts(job.created_at) or 0,
        started_at=_ts(job.started_at),
        finished_at=_ts(job.finished_at),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        result=JobResult(content=job.content, finish_reason=job.finish_reason) if done else None,
        usage=usage,
        cost_usd=float(job.cost_usd) if job.cost_usd is not None else None,
        ttft_ms=job.ttft_ms,
        waiting_reason=job.waiting_reason,
        served_by=job.served_by,
        deadline_at=_ts(job.deadline_at),
        error=JobError(code=job.error_code, message=job.error_message or "")
        if job.error_code and not done
        else None,
        metadata=job.job_metadata,
        cached=bool(job.cached),
        saved_usd=float(job.saved_usd) if job.saved_usd is not None else None,
    )


# -- files ------------------------------------------------------------------------------


class FileOut(BaseModel):
    """OpenAI's file object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None
    line_count: int


def file_out(file: File) -> FileOut:
    """The response body for a file row."""
    return FileOut(
        id=file.id,
        bytes=file.bytes,
        created_at=_ts(file.created_at) or 0,
        filename=file.filename,
        purpose=file.purpose,
        line_count=file.line_count,
    )


# -- batches ----------------------------------------------------------------------------


class BatchSummary:
    """Request counts and usage of a batch, derived from its jobs."""

    def __init__(self, counts: dict[JobStatus, int], usage: tuple[int, int, Decimal]) -> None:
        self.counts = counts
        self.prompt_tokens, self.completion_tokens, self.cost_usd = usage

    @classmethod
    def empty(cls) -> BatchSummary:
        return cls({}, (0, 0, Decimal(0)))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def open(self) -> int:
        return sum(self.counts.get(s, 0) for s in OPEN_JOB_STATUSES)

    def add(self, status: JobStatus, n: int, prompt: int, completion: int, usd: Decimal) -> None:
        """Fold in one (status, count, usage) group of the summary query."""
        self.counts[status] = self.counts.get(status, 0) + n
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost_usd += usd

    def request_counts(self) -> dict[str, int]:
        """OpenAI's request_counts, plus the cancelled and expired lines."""
        return {
            "total": self.total,
            "completed": self.counts.get(JobStatus.SUCCEEDED, 0),
            "failed": self.counts.get(JobStatus.FAILED, 0),
            "cancelled": self.counts.get(JobStatus.CANCELLED, 0),
            "expired": self.counts.get(JobStatus.EXPIRED, 0),
        }


async def summarize_many(
    session: AsyncSession, batch_ids: Sequence[str]
) -> dict[str, BatchSummary]:
    """Counts by status and summed usage of several batches, in one query."""
    summaries = {batch_id: BatchSummary.empty() for batch_id in batch_ids}
    if not summaries:
        return summaries
    stmt = (
        sa.select(
            Job.batch_id,
            Job.status,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(Job.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(Job.completion_tokens), 0),
            sa.func.coalesce(sa.func.sum(Job.cost_usd), 0),
        )
        .where(Job.batch_id.in_(list(summaries)))
        .group_by(Job.batch_id, Job.status)
    )
    for batch_id, status, n, p, c, usd in (await session.execute(stmt)).all():
        summaries[str(batch_id)].add(
            JobStatus(status), n, int(p or 0), int(c or 0), Decimal(usd or 0)
        )
    return summaries


async def summarize(session: AsyncSession, batch_id: str) -> BatchSummary:
    """Counts by status and summed usage of one batch."""
    return (await summarize_many(session, [batch_id]))[batch_id]


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class BatchUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int] = {"cached_tokens": 0}
    output_tokens_details: dict[str, int] = {"reasoning_tokens": 0}


class BatchOut(BaseModel):
    """OpenAI's batch object, with promptq's `priority` and `cost_usd`."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: dict[str, int]
    metadata: dict[str, Any] | None
    usage: BatchUsage
    priority: int
    cost_usd: float
    retry_of: str | None = None
    estimated_cost_usd: float | None = None


def batch_out(batch: Batch, summary: BatchSummary) -> BatchOut:
    """The response body (and webhook data) for a batch row and its derived counts."""
    return BatchOut(
        id=batch.id,
        endpoint=batch.endpoint,
        errors=BatchErrors(data=batch.errors) if batch.errors else None,
        input_file_id=batch.input_file_id,
        completion_window=batch.completion_window,
        status=batch.status,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        created_at=_ts(batch.created_at) or 0,
        in_progress_at=_ts(batch.in_progress_at),
        expires_at=_ts(batch.expires_at),
        finalizing_at=_ts(batch.finalizing_at),
        completed_at=_ts(batch.completed_at),
        failed_at=_ts(batch.failed_at),
        expired_at=_ts(batch.expired_at),
        cancelling_at=_ts(batch.cancelling_at),
        cancelled_at=_ts(batch.cancelled_at),
        request_counts=summary.request_counts(),
        metadata=batch.batch_metadata,
        usage=BatchUsage(
            input_tokens=summary.prompt_tokens,
            output_tokens=summary.completion_tokens,
            total_tokens=summary.prompt_tokens + summary.completion_tokens,
        ),
        priority=batch.priority,
        cost_usd=float(summary.cost_usd),
        retry_of=batch.retry_of,
        estimated_cost_usd=None
        if batch.estimated_cost_usd is None
        else float(batch.estimated_cost_usd),
    )
