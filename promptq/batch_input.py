"""Batch input lines: read with a bounded size, then each parsed and checked on its own, so
a bad line (not JSON, too long, a field past its limit, a request `POST /v1/jobs` would
refuse) fails alone with a stable code and never the whole upload."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from promptq.chat_request import MAX_CUSTOM_ID, MAX_MODEL, body_problem
from promptq.db import MAX_JSON_DEPTH, unstorable

__all__ = [
    "SUPPORTED_URLS",
    "ParsedLine",
    "RawLine",
    "maybe_unstorable",
    "parse_line",
    "read_raw_lines",
    "too_long",
]

SUPPORTED_URLS = ("/v1/chat/completions",)
_DISCARD_CHUNK = 1 << 16  # how much of an over-long line is read at a time, then dropped
_KEPT_PREFIX = 1000  # characters of an over-long line kept as its stored text
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"([^"\\]{1,%d})"' % MAX_CUSTOM_ID)
# What in a line's text may make its parsed value unstorable: a NUL or surrogate escape,
# NaN or an infinity (also a number too large for a float), or, past MAX_JSON_DEPTH
# brackets, deep nesting. Most lines have none, and skip the walk over their value.
_MAYBE_UNSTORABLE = re.compile(r"\\u0000|\\u[dD][89a-fA-F]|NaN|Infinity|[0-9][eE]|[0-9]{300}")


@dataclass(frozen=True)
class ParsedLine:
    """One input line: what it asks for, or why it cannot run."""

    raw: str
    custom_id: str | None = None
    method: str | None = None
    url: str | None = None
    model: str | None = None
    body: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class RawLine:
    """A line as read: all of its bytes, or (`size` > the limit) only its first ones."""

    data: bytes
    size: int
    complete: bool


def read_raw_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[RawLine]:
    """The stream's lines, each read whole only up to `max_line_bytes`: the rest of a
    longer line is read in small chunks and dropped, so memory never grows with it."""
    while True:
        data = stream.readline(max_line_bytes + 1)
        if not data:
            return
        if len(data) <= max_line_bytes or data.endswith(b"\n"):
            yield RawLine(data, len(data), True)
            continue
        size = len(data)
        head = data[: _KEPT_PREFIX * 4]
        del data
        while True:
            rest = stream.readline(_DISCARD_CHUNK)
            size += len(rest)
            if not rest or rest.endswith(b"\n"):
                break
        yield RawLine(head, size, False)


def too_long(line: RawLine, max_line_bytes: int) -> ParsedLine:
    """The failed line for one past the size limit, with its custom_id if its start has one."""
    text = line.data.decode("utf-8", errors="replace")[:_KEPT_PREFIX]
    found = _CUSTOM_ID.search(line.data)
    custom_id = found.group(1).decode("utf-8", errors="replace") if found else None
    if custom_id is not None and unstorable(custom_id) is not None:
        custom_id = None
    return ParsedLine(
        raw=text.replace("\x00", "\ufffd") + "…",
        custom_id=custom_id,
        error_code="line_too_long",
        error_message=f"The line is {line.size} bytes; a line may have at most "
        f"{max_line_bytes} (PROMPTQ_MAX_LINE_BYTES).",
    )


def _fail(raw: str, code: str, message: str, obj: dict[str, Any] | None = None) -> ParsedLine:
    custom_id = obj.get("custom_id") if obj else None
    keep = isinstance(custom_id, str) and len(custom_id) <= MAX_CUSTOM_ID
    return ParsedLine(
        raw=raw,
        custom_id=custom_id if keep else None,
        error_code=code,
        error_message=message,
    )


def _check_envelope(raw: str, obj: dict[str, Any]) -> ParsedLine | None:
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _fail(raw, "missing_custom_id", "Line has no custom_id (a string).", obj)
    if len(custom_id) > MAX_CUSTOM_ID:
        message = f"custom_id has {len(custom_id)} characters; at most {MAX_CUSTOM_ID} are allowed."
        return _fail(raw, "custom_id_too_long", message, obj)
    method, url, body = obj.get("method"), obj.get("url"), obj.get("body")
    if method != "POST":
        shown = repr(method)[:40]
        return _fail(raw, "invalid_method", f"method must be 'POST', not {shown}.", obj)
    if url not in SUPPORTED_URLS:
        return _fail(raw, "invalid_url", f"url must be one of {list(SUPPORTED_URLS)}.", obj)
    if not isinstance(body, dict):
        return _fail(raw, "invalid_body", "body must be a JSON object.", obj)
    return None


def _check_body(raw: str, obj: dict[str, Any], body: dict[str, Any]) -> ParsedLine | None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _fail(raw, "missing_model", "body.model is required.", obj)
    if len(model) > MAX_MODEL:
        message = f"body.model has {len(model)} characters; at most {MAX_MODEL} are allowed."
        return _fail(raw, "model_too_long", message, obj)
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return _fail(raw, "invalid_body", "body.messages must be a non-empty list.", obj)
    problem = body_problem(body)
    if problem is not None:
        return _fail(raw, "invalid_body", problem, obj)
    return None


def maybe_unstorable(raw: str) -> bool:
    """False when the value parsed from `raw` surely holds nothing promptq cannot store
    (a cheap look at the text); True when it must be walked (promptq.db.unstorable)."""
    if raw.count("[") + raw.count("{") >= MAX_JSON_DEPTH:
        return True
    return _MAYBE_UNSTORABLE.search(raw) is not None


def parse_line(raw: str) -> tuple[ParsedLine, bool]:
    """Check one JSONL line; the flag says whether it was JSON at all."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also too deep, or an integer too long
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return _fail(raw, "invalid_json", f"Line is not valid JSON: {reason}."), False
    if not isinstance(obj, dict):
        return _fail(raw, "invalid_request", "Line must be a JSON object."), True
    found = unstorable(obj) if maybe_unstorable(raw) else None
    if found is not None:
        safe = None if unstorable(obj.get("custom_id")) else obj
        message = f"{found[0] or 'Line'} contains {found[1]}, which promptq cannot store."
        return _fail(raw, "invalid_request", message, safe), True
    failed = _check_envelope(raw, obj) or _check_body(raw, obj, obj["body"])
    if failed is not None:
        return failed, True
    body: dict[str, Any] = obj["body"]
    return ParsedLine(raw, obj["custom_id"], "POST", obj["url"], body["model"], body), True
