"""The errors promptq raises, and which of them the retry logic may retry.

PromptqError
├── ConfigError                 bad settings or models file (start-up)
├── ApiError                    an HTTP answer other than 2xx: `code`, `message`, `http_status`
│   ├── InvalidRequest          the client's request is wrong (4xx, stable code)
│   │   └── ModelNotFound
│   ├── NotFound                no such object, or another tenant's (404)
│   ├── Unauthorized            missing or invalid API key (401)
│   └── ServiceUnavailable      the database is down; retry (503)
└── AttemptError                one job attempt failed; `code` is a JobErrorCode
    ├── RetryableError          try again later (429, 5xx, timeouts, lost worker)
    │   └── RateLimited         honours the provider's Retry-After
    └── TerminalError           retrying cannot help (400, 401, 404, prompt too long)
        └── DeadlineExceeded    its deadline or batch window passed before it was sent

Every API error goes through one handler (promptq.api.errors); the codes are listed in
docs/errors.md, which a test keeps in step with the code."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ApiError",
    "AttemptError",
    "ConfigError",
    "DeadlineExceeded",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "PromptqError",
    "RateLimited",
    "RetryableError",
    "ServiceUnavailable",
    "TerminalError",
    "Unauthorized",
    "model_not_found_message",
]


class PromptqError(Exception):
    """Base of every error promptq raises on purpose."""


class ConfigError(PromptqError):
    """The settings or the models file are wrong; raised at start-up."""


class ApiError(PromptqError):
    """An error the API answers with: a stable `code`, a `message` for people, the HTTP
    status, and the request field at fault (`param`) or extra headers when there are."""

    def __init__(
        self,
        code: str,
        message: str,
        http_status: int,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.param = param
        self.headers = dict(headers or {})


class InvalidRequest(ApiError):
    """A client request that promptq refuses (400 unless said otherwise)."""

    def __init__(
        self, code: str, message: str, http_status: int = 400, *, param: str | None = None
    ) -> None:
        super().__init__(code, message, http_status, param=param)


def model_not_found_message(model: str) -> str:
    """The one wording of `model_not_found`, for a request, a batch line or a job."""
    return f"The model '{model}' does not exist."


class ModelNotFound(InvalidRequest):
    """The request names a model that the models file does not list."""

    def __init__(self, model: str) -> None:
        super().__init__("model_not_found", model_not_found_message(model), 400)


class NotFound(ApiError):
    """No object of that kind and id, or one another tenant owns (the same answer)."""

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__("not_found", f"No {kind} with id {object_id!r}.", 404)


class Unauthorized(ApiError):
    """The API key is missing or invalid."""

    def __init__(self, message: str) -> None:
        super().__init__("unauthorized", message, 401, headers={"WWW-Authenticate": "Bearer"})


class ServiceUnavailable(ApiError):
    """A dependency (the database) cannot answer now; the client should retry."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, 503)


class AttemptError(PromptqError):
    """One attempt at a job failed; `code` and `message` end up on the job row, and
    `provider_status` is the HTTP status the provider or engine answered, if any."""

    def __init__(self, code: str, message: str, provider_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.provider_status = provider_status


class RetryableError(AttemptError):
    """The attempt may succeed later: rate limits, server errors, timeouts."""


class RateLimited(RetryableError):
    """The provider said 429; `retry_after` is its Retry-After in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__("rate_limited", message, 429)
        self.retry_after = retry_after


class TerminalError(AttemptError):
    """Retrying cannot help: the provider refused the request, or the prompt cannot fit."""


class DeadlineExceeded(TerminalError):
    """The job's deadline (`deadline_exceeded`) or its batch's window (`batch_expired`)
    passed before it could be sent to its provider; the job ends `expired`."""
