"""Batch input files: a streaming, line-by-line parse with per-line errors, stored in bulk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import IO

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.batch_input import (
    SUPPORTED_URLS,
    ParsedLine,
    parse_line,
    read_raw_lines,
    too_long,
)
from promptq.chat_request import MAX_FILENAME
from promptq.errors import InvalidRequest
from promptq.ids import new_id
from promptq.models import File, FileLine, FilePurpose

__all__ = [
    "SUPPORTED_URLS",
    "ParsedLine",
    "parse_line",
    "read_lines",
    "store_upload",
]

_INSERT_ROWS = 1000  # rows per bulk INSERT: bounded memory, few round trips
_INSERT_BYTES = 16 * 1024 * 1024  # and at most about this much line text per INSERT
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024  # Settings.max_line_bytes's default


def read_lines(
    stream: IO[bytes], max_lines: int, max_line_bytes: int
) -> Iterator[tuple[int, ParsedLine, bool]]:
    seen: set[str] = set()
    line_no = 0
    for line in read_raw_lines(stream, max_line_bytes):
        if not line.complete:
            parsed, was_json = too_long(line, max_line_bytes), True
        else:
            text = line.data.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            parsed, was_json = parse_line(text)
            if "\x00" in text:  # never valid JSON; Postgres text cannot hold it: store U+FFFD
                parsed = replace(parsed, raw=text.replace("\x00", "\ufffd"))
        line_no += 1
        if line_no > max_lines:
            raise InvalidRequest(
                "too_many_lines", f"A batch file may have at most {max_lines} lines.", 413
            )
        if parsed.error_code is None and parsed.custom_id in seen:
            parsed = ParsedLine(
                raw=parsed.raw,
                custom_id=parsed.custom_id,
                error_code="duplicate_custom_id",
                error_message=f"custom_id {parsed.custom_id!r} appears on an earlier line.",
            )
        elif parsed.custom_id is not None and parsed.error_code is None:
            seen.add(parsed.custom_id)
        yield line_no, parsed, was_json


def _next_block(
    lines: Iterator[tuple[int, ParsedLine, bool]],
) -> list[tuple[int, ParsedLine, bool]]:
    block: list[tuple[int, ParsedLine, bool]] = []
    size = 0
    for item in lines:
        block.append(item)
        size += len(item[1].raw)
        if len(block) >= _INSERT_ROWS or size >= _INSERT_BYTES:
            break
    return block


async def store_upload(
    session: AsyncSession,
    tenant: str,
    filename: str,
    stream: IO[bytes],
    max_lines: int,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> File:
    """Parse `stream` line by line and store the file and its lines; 400 if nothing is JSON.
    A line longer than `max_line_bytes` fails alone, and is never held in memory whole."""
    filename = filename.replace("\x00", "\ufffd")  # a multipart header may hold one; text cannot
    if len(filename) > MAX_FILENAME:
        raise InvalidRequest(
            "filename_too_long", f"The file name may have at most {MAX_FILENAME} characters."
        )
    file = File(id=new_id("file-"), tenant=tenant, purpose=FilePurpose.BATCH, filename=filename)
    session.add(file)
    await session.flush()
    lines = json_lines = size = 0
    parsed_lines = read_lines(stream, max_lines, max_line_bytes)
    while True:
        # Reading and parsing are blocking work: do them off the event loop, a block at a time.
        block = await anyio.to_thread.run_sync(_next_block, parsed_lines)
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
