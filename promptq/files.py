"""Batch input files: a streaming, line-by-line parse with per-line errors, stored in bulk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from itertools import islice
from typing import IO, Any

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.db import unstorable
from promptq.errors import InvalidRequest
from promptq.ids import new_id
from promptq.models import File, FileLine, FilePurpose

__all__ = ["SUPPORTED_URLS", "ParsedLine", "parse_line", "store_upload", "stream_input_lines"]

SUPPORTED_URLS = ("/v1/chat/completions",)
_INSERT_ROWS = 1000  # rows per bulk INSERT: bounded memory, few round trips


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


def _fail(raw: str, code: str, message: str, obj: dict[str, Any] | None = None) -> ParsedLine:
    custom_id = obj.get("custom_id") if obj else None
    return ParsedLine(
        raw=raw,
        custom_id=custom_id if isinstance(custom_id, str) else None,
        error_code=code,
        error_message=message,
    )


def parse_line(raw: str) -> tuple[ParsedLine, bool]:
    """Check one JSONL line; the flag says whether it was JSON at all."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also too deep, or an integer too long
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return _fail(raw, "invalid_json", f"Line is not valid JSON: {reason}."), False
    if not isinstance(obj, dict):
        return _fail(raw, "invalid_request", "Line must be a JSON object."), True
    found = unstorable(obj)
    if found is not None:
        safe = None if unstorable(obj.get("custom_id")) else obj
        message = f"{found[0] or 'Line'} contains {found[1]}, which promptq cannot store."
        return _fail(raw, "invalid_request", message, safe), True
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _fail(raw, "missing_custom_id", "Line has no custom_id (a string).", obj), True
    method, url, body = obj.get("method"), obj.get("url"), obj.get("body")
    if method != "POST":
        return _fail(raw, "invalid_method", f"method must be 'POST', not {method!r}.", obj), True
    if url not in SUPPORTED_URLS:
        return _fail(raw, "invalid_url", f"url must be one of {list(SUPPORTED_URLS)}.", obj), True
    if not isinstance(body, dict):
        return _fail(raw, "invalid_body", "body must be a JSON object.", obj), True
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _fail(raw, "missing_model", "body.model is required.", obj), True
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return _fail(raw, "invalid_body", "body.messages must be a non-empty list.", obj), True
    return ParsedLine(raw, custom_id, method, url, model, body), True


def _read_lines(stream: IO[bytes], max_lines: int) -> Iterable[tuple[int, ParsedLine, bool]]:
    seen: set[str] = set()
    line_no = 0
    for raw_bytes in stream:
        text = raw_bytes.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        line_no += 1
        if line_no > max_lines:
            raise InvalidRequest(
                "too_many_lines", f"A batch file may have at most {max_lines} lines.", 413
            )
        parsed, was_json = parse_line(text)
        if "\x00" in text:  # never valid JSON; Postgres text cannot hold it, so store U+FFFD
            parsed = replace(parsed, raw=text.replace("\x00", "\ufffd"))
        if parsed.error_code is None and parsed.custom_id in seen:
            parsed = ParsedLine(
                raw=text,
                custom_id=parsed.custom_id,
                error_code="duplicate_custom_id",
                error_message=f"custom_id {parsed.custom_id!r} appears on an earlier line.",
            )
        elif parsed.custom_id is not None and parsed.error_code is None:
            seen.add(parsed.custom_id)
        yield line_no, parsed, was_json


async def store_upload(
    session: AsyncSession, tenant: str, filename: str, stream: IO[bytes], max_lines: int
) -> File:
    """Parse `stream` line by line and store the file and its lines; 400 if nothing is JSON."""
    filename = filename.replace("\x00", "\ufffd")  # a multipart header may hold one; text cannot
    file = File(id=new_id("file-"), tenant=tenant, purpose=FilePurpose.BATCH, filename=filename)
    session.add(file)
    await session.flush()
    lines = json_lines = size = 0
    parsed_lines = _read_lines(stream, max_lines)
    while True:
        # Reading and parsing are blocking work: do them off the event loop, a block at a time.
        block = await anyio.to_thread.run_sync(lambda: list(islice(parsed_lines, _INSERT_ROWS)))
        if not block:
            break
        rows = []
        for line_no, parsed, was_json in block:
            lines, json_lines = line_no, json_lines + was_json
            size += len(parsed.raw) + 1
            rows.append({"file_id": file.id, "line_no": line_no, **parsed.__dict__})
        await session.execute(sa.insert(FileLine), rows)
    if json_lines == 0:
        await session.rollback()
        raise InvalidRequest("invalid_file", "The file is not JSONL: no line is a JSON object.")
    file.line_count, file.bytes = lines, size
    await session.commit()
    return file


async def stream_input_lines(session: AsyncSession, file_id: str) -> AsyncIterator[bytes]:
    """The stored lines of an input file, in order, as JSONL bytes."""
    stmt = (
        sa.select(FileLine.raw)
        .where(FileLine.file_id == file_id)
        .order_by(FileLine.line_no)
        .execution_options(yield_per=1000)
    )
    result = await session.stream_scalars(stmt)
    async for raw in result:
        yield (raw + "\n").encode()
