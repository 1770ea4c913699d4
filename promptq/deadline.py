"""A native job's optional deadline: `deadline` (an RFC 3339 time) or `timeout_seconds`
(from submission) on POST /v1/jobs, and how every part of promptq enforces it. Past it the
job is not sent to its provider or engine: a queued job is expired by the sweeper (or by
the worker that takes its message), and waiting for capacity, a 429, an open circuit or
an engine slot ends there, with `deadline_exceeded` (a batch line's deadline is its
batch's expiry: `batch_expired`). A call already sent, or an engine request already
generating, finishes and keeps its result. A claimed job's deadline, as the workers
enforce it, is promptq.jobs.Deadline."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from promptq.errors import InvalidRequest

__all__ = ["MAX_DEADLINE", "job_deadline"]

#: The farthest deadline accepted, as far as the longest batch completion window.
MAX_DEADLINE = timedelta(days=30)
# RFC 3339: a date, "T" (or a space), a time, and an offset ("Z" or ±hh:mm) that must be
# there; fromisoformat alone would take a naive time and guess its zone.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _refuse(param: str, message: str) -> InvalidRequest:
    return InvalidRequest("invalid_deadline", f"{param}: {message}", param=param)


def job_deadline(
    deadline: str | None, timeout_seconds: float | None, now: datetime
) -> datetime | None:
    """The job's deadline (UTC) from the request's `deadline` or `timeout_seconds`, or
    None; InvalidRequest `invalid_deadline` if it is malformed, not in the future, more
    than 30 days away, or both are given."""
    if deadline is not None and timeout_seconds is not None:
        raise _refuse("deadline", "give deadline or timeout_seconds, not both")
    if timeout_seconds is not None:
        if not 0 < timeout_seconds <= MAX_DEADLINE.total_seconds():
            limit = int(MAX_DEADLINE.total_seconds())
            raise _refuse("timeout_seconds", f"must be above 0 and at most {limit} (30 days)")
        return now + timedelta(seconds=timeout_seconds)
    if deadline is None:
        return None
    if not _RFC3339.fullmatch(deadline):
        raise _refuse(
            "deadline", "must be an RFC 3339 time with an offset, e.g. 2026-01-31T12:00:00Z"
        )
    try:
        at = datetime.fromisoformat(deadline.upper().replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise _refuse("deadline", f"is not a valid time ({exc})") from None
    if at <= now:
        raise _refuse("deadline", "is not in the future")
    if at - now > MAX_DEADLINE:
        raise _refuse("deadline", "is more than 30 days away")
    return at
