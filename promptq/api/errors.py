"""API errors: JSON in OpenAI's envelope, `{"error": {"code", "message", "type", "param"}}`,
with a stable code; bad input is never a 500."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException

from promptq.api.schemas import ErrorBody, ErrorResponse
from promptq.errors import InvalidRequest

__all__ = ["ERROR_RESPONSES", "error_response", "install_error_handlers"]

log = structlog.get_logger(__name__)

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    503: "service_unavailable",
}


# The error responses of the /v1 routes, for the OpenAPI document (not every route can
# return every one of them).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The request is malformed, or names a model, file or value promptq refuses.",
        401: "The API key is missing or invalid.",
        404: "No such object, or another tenant's.",
        409: "The object's state forbids this, or a request with this Idempotency-Key is "
        "still in progress.",
        413: "The body, upload or batch file is too large.",
        422: "This Idempotency-Key was used with a different request.",
        503: "The database is unavailable; retry.",
    }.items()
}


def _utf8(text: str) -> str:
    # An unpaired surrogate (from a JSON "\ud800" escape) echoed in a message could not be
    # encoded as the UTF-8 of the response.
    return text.encode("utf-8", "replace").decode("utf-8")


def error_response(
    status_code: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one error shape of the API."""
    body = ErrorResponse(
        error=ErrorBody(
            code=code,
            message=_utf8(message),
            type="invalid_request_error" if status_code < 500 else "server_error",
            param=None if param is None else _utf8(param),
        )
    )
    return JSONResponse(body.model_dump(), status_code=status_code, headers=dict(headers or {}))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors: list[Any] = list(exc.errors())
    if not errors:
        return "The request is not valid.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    # A whole-body check names the field at fault in its context (see api.schemas._Input).
    param = ".".join(loc) or (first.get("ctx") or {}).get("path") or None
    return f"{param or 'request'}: {first.get('msg', 'invalid')}", param


def install_error_handlers(app: FastAPI) -> None:
    """Map promptq's errors, validation errors and HTTP errors to the JSON shape."""

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, "invalid_request", message, param)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unexpected_error", error=repr(exc)[:300])
        return error_response(500, "internal_error", "An unexpected error; it was logged.")

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        log.warning("api.database_unavailable", error=str(exc)[:200])
        return error_response(503, "database_unavailable", "The database is unavailable; retry.")

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
        # Input validation should have refused the value; retrying cannot help, so not a 503.
        log.warning("api.unstorable_value", error=str(exc.orig)[:200])
        return error_response(400, "invalid_value", "A value in the request cannot be stored.")
