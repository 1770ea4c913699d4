"""A chat-completions request as promptq accepts it, and the limits of every field promptq
stores: checked before storage, so a value too long fails its own request or batch line
with a stable code instead of the database refusing a whole upload."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

__all__ = [
    "MAX_CUSTOM_ID",
    "MAX_FILENAME",
    "MAX_MODEL",
    "MAX_WEBHOOK_URL",
    "METADATA_MAX_KEYS",
    "METADATA_MAX_KEY_CHARS",
    "METADATA_MAX_VALUE_CHARS",
    "BatchLineBody",
    "ChatRequest",
    "Message",
    "Metadata",
    "body_problem",
]

# The database's column sizes (promptq.models) are the ceiling; these are what is checked.
MAX_CUSTOM_ID = 512
MAX_MODEL = 200
MAX_FILENAME = 500
MAX_WEBHOOK_URL = 2000
# OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512.
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512

Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=METADATA_MAX_KEY_CHARS)],
        Annotated[str, StringConstraints(max_length=METADATA_MAX_VALUE_CHARS)],
    ],
    Field(
        max_length=METADATA_MAX_KEYS,
        description=f"Up to {METADATA_MAX_KEYS} string pairs; keys up to "
        f"{METADATA_MAX_KEY_CHARS} characters, values up to {METADATA_MAX_VALUE_CHARS}.",
    ),
]


class Message(BaseModel):
    """One chat message; content may be text or OpenAI content parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The chat-completions fields promptq checks; other OpenAI sampling parameters
    (response_format, seed, ...) pass through to the backend."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=MAX_MODEL)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None


class BatchLineBody(ChatRequest):
    """A batch line's body: the same checks as `POST /v1/jobs`, promptq's own fields too."""

    priority: int | None = Field(default=None, ge=0, le=9)
    metadata: Metadata | None = None
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL)


def body_problem(body: dict[str, Any]) -> str | None:
    """Why a batch line's body fails the checks of `POST /v1/jobs`, e.g.
    `body.temperature: Input should be less than or equal to 2`; None if it passes."""
    try:
        BatchLineBody.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in ("body", *first["loc"]))
        return f"{where}: {first['msg']}"
    return None
