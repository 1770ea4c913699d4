"""The one error path of the API: every error is a promptq ApiError (raised by promptq, or
made here from a validation, routing or database error) serialised by `error_json` in
OpenAI's envelope, `{"error": {"code", "message", "type", "param"}}`, with a stable code
(listed in docs/errors.md); bad input is never a 500."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from promptq.api.schemas import ErrorBody, ErrorResponse
from promptq.errors import ApiError, InvalidRequest, ServiceUnavailable

__all__ = [
    "ERROR_RESPONSES",
    "HTTP_CODES",
    "error_json",
    "error_response",
    "install_error_handlers",
]

log = structlog.get_logger(__name__)

#: Codes of errors raised by the web framework itself (an unknown path, a wrong method, a
#: malformed multipart body); promptq's own errors carry their code.
HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
#: The code of any other status the framework may raise.
OTHER_HTTP_CODE = "http_error"


# The error responses of the /v1 routes, for the OpenAPI document (not every route can
# return every one of them).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The request is malformed, or names a model, file or value promptq refuses.",
        401: "The API key is missing or invalid.",
        402: "The key's budget cannot pay for this (budget_exceeded).",
        403: "This needs an admin key.",
        404: "No such object, or another tenant's.",
        409: "The object's state forbids this, or a request with this Idempotency-Key is "
        "still in progress.",
        413: "The body, upload or batch file is too large.",
        422: "This Idempotency-Key was used with a different request.",
        429: "Too many of this tenant's downloads or uploads are in progress; retry after "
        "Retry-After seconds.",
        503: "The database is unavailable, or every connection is busy; retry.",
    }.items()
}


def _utf8(text: str) -> str:
    # An unpaired surrogate (from a JSON "\ud800" escape) echoed in a message could not be
    # encoded as the UTF-8 of the response.
    return text.encode("utf-8", "replace").decode("utf-8")


def error_json(exc: ApiError) -> dict[str, Any]:
    """The body of an error response: the one error shape of the API."""
    body = ErrorResponse(
        error=ErrorBody(
            code=exc.code,
            message=_utf8(exc.message),
            type="invalid_request_error" if exc.http_status < 500 else "server_error",
            param=None if exc.param is None else _utf8(exc.param),
        )
    )
    return body.model_dump()


def error_response(exc: ApiError) -> JSONResponse:
    """The response for an ApiError: its status, its headers, `error_json` as the body."""
    return JSONResponse(error_json(exc), status_code=exc.http_status, headers=exc.headers)


def _validation_error(exc: RequestValidationError) -> InvalidRequest:
    errors: list[Any] = list(exc.errors())
    if not errors:
        return InvalidRequest("invalid_request", "The request is not valid.")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    # A whole-body check names the field at fault in its context (see api.schemas._Input).
    param = ".".join(loc) or (first.get("ctx") or {}).get("path") or None
    message = f"{param or 'request'}: {first.get('msg', 'invalid')}"
    return InvalidRequest("invalid_request", message, param=param)


def _http_error(exc: HTTPException) -> ApiError:
    code = HTTP_CODES.get(exc.status_code, OTHER_HTTP_CODE)
    return ApiError(code, str(exc.detail), exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Turn every error into an ApiError and answer it with `error_response`."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(_http_error(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unexpected_error", error=repr(exc)[:300])
        message = "An unexpected error; it was logged."
        return error_response(ApiError("internal_error", message, 500))

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        log.warning("api.database_unavailable", error=str(exc)[:200])
        message = "The database is unavailable; retry."
        return error_response(ServiceUnavailable("database_unavailable", message))

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        # Every connection is busy: the database is up but this process has none free.
        log.warning("api.database_busy", error=str(exc)[:200])
        message = "Every database connection is busy; retry shortly."
        return error_response(ApiError("database_busy", message, 503, headers={"Retry-After": "1"}))

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
        # Input validation should have refused the value; retrying cannot help, so not a 503.
        log.warning("api.unstorable_value", error=str(exc.orig)[:200])
        message = "A value in the request cannot be stored."
        return error_response(InvalidRequest("invalid_value", message))
