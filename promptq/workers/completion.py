"""What a backend returns for one job attempt, whatever the backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Backend", "Completion", "JobRequest"]


@dataclass(frozen=True)
class JobRequest:
    """One claimed job, as a backend sees it."""

    job_id: str
    attempt: int
    model: str
    upstream: str
    body: dict[str, Any]  # the chat-completions request body (messages, max_tokens, ...)
    priority: int = 5  # 0 runs soonest


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


class Backend(Protocol):
    """Runs one attempt of a job; raises RetryableError or TerminalError on failure."""

    async def complete(self, request: JobRequest) -> Completion: ...

    async def aclose(self) -> None: ...
