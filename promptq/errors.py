"""The errors promptq raises, and which of them the retry logic may retry.

PromptqError
├── ConfigError                 bad settings or models file (start-up)
├── InvalidRequest              the client's request is wrong (4xx, stable code)
│   └── ModelNotFound
└── JobError                    one job attempt failed
    ├── RetryableError          try again later (429, 5xx, timeouts, lost worker)
    │   └── RateLimited         honours the provider's Retry-After
    └── TerminalError           retrying cannot help (400, 401, 404, prompt too long)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidRequest",
    "JobError",
    "ModelNotFound",
    "PromptqError",
    "RateLimited",
    "RetryableError",
    "TerminalError",
]


class PromptqError(Exception):
    """Base of every error promptq raises on purpose."""


class ConfigError(PromptqError):
    """The settings or the models file are wrong; raised at start-up."""


class InvalidRequest(PromptqError):
    """A client request that promptq refuses, with a stable code and an HTTP status."""

    def __init__(self, code: str, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status_code


class ModelNotFound(InvalidRequest):
    """The request names a model that the models file does not list."""

    def __init__(self, model: str) -> None:
        super().__init__("model_not_found", f"The model {model!r} does not exist.", 400)


class JobError(PromptqError):
    """One attempt at a job failed; `code` and `message` end up on the job row."""

    def __init__(self, code: str, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status_code


class RetryableError(JobError):
    """The attempt may succeed later: rate limits, server errors, timeouts."""


class RateLimited(RetryableError):
    """The provider said 429; `retry_after` is its Retry-After in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__("rate_limited", message, 429)
        self.retry_after = retry_after


class TerminalError(JobError):
    """Retrying cannot help: the provider refused the request, or the prompt cannot fit."""
