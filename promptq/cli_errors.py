"""What the CLI prints when a command fails: one line on stderr and exit code 1 for the
failures a user can fix (API unreachable, a refused key, an unknown id, a missing file, a bad
models file or setting, a database or Redis that does not answer). `promptq --debug` (or
PROMPTQ_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import httpx
from pydantic import ValidationError

from promptq.client import ApiAnswerError, BatchRefused
from promptq.errors import ConfigError

__all__ = ["debug_requested", "describe", "fail"]

_HINTS = {
    401: "check PROMPTQ_API_KEY (make one with `promptq keys create NAME`)",
    403: "this key may not see it",
    404: "check the id",
}


def debug_requested() -> bool:
    """Whether the user asked for tracebacks."""
    return "--debug" in sys.argv[1:] or os.environ.get("PROMPTQ_DEBUG", "") not in ("", "0")


def _api_error(exc: ApiAnswerError) -> str:
    hint = _HINTS.get(exc.status_code)
    message = f"the API answered {exc.status_code} {exc.code}: {exc.message}"
    return f"{message} ({hint})" if hint else message


def _unreachable(exc: httpx.TransportError) -> str:
    try:
        url = exc.request.url
        where = f"{url.scheme}://{url.netloc.decode()}"
    except RuntimeError:  # no request attached
        where = "the API"
    reason = str(exc) or type(exc).__name__
    return (
        f"cannot reach promptq's API at {where}: {reason} "
        "(is `promptq api` running? PROMPTQ_API_URL or --api-url says where)"
    )


def _settings_error(exc: ValidationError) -> str:
    """A bad PROMPTQ_* variable, named as the user set it."""
    settings = exc.title == "Settings"

    def name(loc: tuple[int | str, ...]) -> str:
        field = ".".join(str(p) for p in loc)
        return f"PROMPTQ_{field.upper()}" if settings and field else field or exc.title

    problems = "; ".join(f"{name(error['loc'])}: {error['msg']}" for error in exc.errors())
    return f"invalid {'settings' if settings else exc.title}: {problems}"


def _service_error(exc: Exception) -> str | None:
    """A database or Redis that does not answer."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError):
        first = str(exc.orig or exc).strip().splitlines()[0]
        return f"the database failed: {first} (PROMPTQ_DATABASE_URL says where it is)"
    if isinstance(exc, RedisConnectionError):
        return f"cannot reach Redis: {exc} (PROMPTQ_REDIS_URL says where it is)"
    return None


def describe(exc: BaseException) -> str:
    """One line for the user about `exc`."""
    if isinstance(exc, ApiAnswerError):
        return _api_error(exc)
    if isinstance(exc, BatchRefused):
        return str(exc)
    if isinstance(exc, httpx.TransportError):
        return _unreachable(exc)
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    from promptq.demo import ServiceFailed

    if isinstance(exc, ConfigError | ServiceFailed):
        return str(exc)
    if isinstance(exc, ValidationError):
        return _settings_error(exc)
    if isinstance(exc, Exception):
        known = _service_error(exc)
        if known:
            return known
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"unexpected {type(exc).__name__}: {first} (run `promptq --debug ...` for the traceback)"


def fail(exc: BaseException) -> NoReturn:
    """Print `exc` as one line on stderr and exit 1."""
    sys.stderr.write(f"promptq: {describe(exc)}\n")
    sys.stderr.flush()
    raise SystemExit(1)
