"""What a backend returns for one job attempt, whatever the backend, and that answer as an
OpenAI chat.completion body."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from promptq.jobs import Deadline

__all__ = ["Completion", "JobRequest", "ModelClient", "chat_completion_body"]


@dataclass(frozen=True)
class JobRequest:
    """One claimed job, as a backend sees it."""

    job_id: str
    attempt: int
    model: str
    upstream: str
    body: dict[str, Any]  # the chat-completions request body (messages, max_tokens, ...)
    priority: int = 5  # 0 runs soonest
    #: When it stops waiting for an engine slot (None: never); one generating finishes.
    deadline: Deadline | None = None


@dataclass(frozen=True)
class Completion:
    """A finished attempt: the text, why it stopped, and the usage the backend reported."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None = None
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ModelClient(Protocol):
    """Runs one attempt of a job; raises RetryableError or TerminalError on failure."""

    async def complete(self, request: JobRequest) -> Completion: ...

    async def aclose(self) -> None: ...


def chat_completion_body(job_id: str, model: str, completion: Completion) -> dict[str, Any]:
    """A `chat.completion` object for a backend that does not speak OpenAI natively."""
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }
