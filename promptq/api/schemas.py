"""Request and response bodies of the API (OpenAI's shapes where OpenAI has one)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from promptq.batches import BatchSummary
from promptq.db import unstorable
from promptq.models import Batch, File, Job

__all__ = [
    "BatchCreate",
    "BatchList",
    "BatchOut",
    "ErrorBody",
    "ErrorResponse",
    "FileOut",
    "JobCreate",
    "JobOut",
    "ModelList",
    "ModelOut",
    "batch_out",
    "file_out",
    "job_out",
]

Priority = Field(default=5, ge=0, le=9, description="0 runs soonest, 9 latest.")


class ErrorBody(BaseModel):
    """What went wrong: a stable `code` to branch on, a `message` for people, and the
    request field at fault, if one is."""

    code: str
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None


class ErrorResponse(BaseModel):
    """The body of every error response (OpenAI's envelope)."""

    error: ErrorBody


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


class _Input(BaseModel):
    """A request body; everything in it, extra fields too, must be storable (see
    `promptq.db.unstorable`), or it is refused with a 400 naming the field."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        found = unstorable(data)
        if found is not None:
            # `path` becomes the error's `param` (see promptq.api.errors).
            raise PydanticCustomError(
                "unstorable_value",
                "contains {problem}, which promptq cannot store",
                {"path": found[0], "problem": found[1]},
            )
        return data


class Message(BaseModel):
    """One chat message; content may be text or OpenAI content parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class JobCreate(_Input):
    """A chat-completions request plus promptq's own fields; other OpenAI sampling
    parameters (response_format, seed, ...) pass through to the backend."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    priority: int = Priority
    metadata: dict[str, str] | None = None
    webhook_url: str | None = Field(default=None, max_length=2000)

    def request_body(self) -> dict[str, Any]:
        """The body sent to the backend: everything but promptq's own fields."""
        return self.model_dump(exclude={"priority", "metadata", "webhook_url"}, exclude_none=True)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class JobResult(BaseModel):
    content: str | None
    finish_reason: str | None


class JobError(BaseModel):
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
    error: JobError | None
    metadata: dict[str, Any] | None


def job_out(job: Job) -> JobOut:
    """The response body for a job row."""
    done = job.status == "succeeded"
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
        error=JobError(code=job.error_code, message=job.error_message or "")
        if job.error_code and not done
        else None,
        metadata=job.job_metadata,
    )


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


class BatchCreate(_Input):
    """OpenAI's batch request, plus `priority` and `webhook_url`."""

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    webhook_url: str | None = Field(default=None, max_length=2000)


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


def batch_out(batch: Batch, summary: BatchSummary) -> BatchOut:
    """The response body for a batch row and its derived counts."""
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
    )


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "promptq"
    backend: str
    input_per_mtok: float
    output_per_mtok: float
    rpm: int | None
    tpm: int | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
