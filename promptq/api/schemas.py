"""Request and response bodies of the API (OpenAI's shapes where OpenAI has one). The
bodies of jobs, batches and files are views (promptq.views), re-exported here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from promptq.chat_request import MAX_WEBHOOK_URL, ChatRequest, Metadata
from promptq.db import unstorable
from promptq.views import BatchOut, FileOut, JobOut, batch_out, file_out, job_out

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


class JobCreate(_Input, ChatRequest):
    """A chat-completions request plus promptq's own fields; other OpenAI sampling
    parameters (response_format, seed, ...) pass through to the backend."""

    model_config = ConfigDict(extra="allow")

    priority: int = Priority
    metadata: Metadata | None = None
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL)
    cache: bool | None = Field(
        default=None, description="false: never answer this request from the response cache."
    )
    deadline: str | None = Field(
        default=None,
        max_length=64,
        description="An RFC 3339 time (with an offset) after which the job is not sent to "
        "its provider or engine: a job still queued, or waiting for capacity, a 429, an "
        "open circuit or an engine slot, ends expired (deadline_exceeded), using no "
        "attempt and billed nothing; one already running finishes. At most 30 days away.",
        json_schema_extra={"format": "date-time"},
    )
    timeout_seconds: float | None = Field(
        default=None,
        description="The deadline as seconds from submission (instead of deadline).",
    )

    def request_body(self) -> dict[str, Any]:
        """The body sent to the backend: everything but promptq's own fields."""
        return self.model_dump(
            exclude={"priority", "metadata", "webhook_url", "cache", "deadline", "timeout_seconds"},
            exclude_none=True,
        )


class BatchCreate(_Input):
    """OpenAI's batch request, plus `priority` and `webhook_url`."""

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: str
    completion_window: str = "24h"
    metadata: Metadata | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL)
    cache: bool | None = Field(
        default=None, description="false: never answer this batch's lines from the cache."
    )
    max_cost_usd: float | None = Field(
        default=None,
        ge=0,
        description="Fail the batch (errors: estimate_too_high) if its estimate is higher; "
        "checked once its lines are read, before any runs.",
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
