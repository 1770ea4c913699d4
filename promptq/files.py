"""Batch input files: stored at upload as their lines' text, streamed and written with
`COPY`; each line is parsed and checked when a batch over the file is validated
(promptq.batch_validation), so a bad line fails alone there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.batch_input import (
    SUPPORTED_URLS,
    ParsedLine,
    parse_line,
    read_raw_lines,
    too_long,
)
from promptq.bulk_copy import copy_rows
from promptq.chat_request import MAX_FILENAME
from promptq.errors import InvalidRequest
from promptq.ids import new_id
from promptq.models import File, FileLine, FilePurpose

__all__ = [
    "SUPPORTED_URLS",
    "ParsedLine",
    "StoredLine",
    "parse_line",
    "read_lines",
    "store_upload",
]

_BLOCK_ROWS = 5000  # lines read and decoded per trip to a thread
_BLOCK_BYTES = 16 * 1024 * 1024  # and at most about this much line text
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024  # Settings.max_line_bytes's default
_COLUMNS = ("file_id", "line_no", "raw", "custom_id", "error_code", "error_message")


@dataclass(frozen=True)
class StoredLine:
    """A line as stored at upload: its text, and an error only if it failed already
    (too long, or holding a NUL that Postgres text cannot keep)."""

    line_no: int
    raw: str
    custom_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: Whether the line is known to be JSON (None: not looked at, which is cheaper).
    is_json: bool | None = None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def read_lines(
    stream: IO[bytes], max_lines: int, max_line_bytes: int, *, find_json: bool = True
) -> Iterator[StoredLine]:
    """The stream's non-blank lines, numbered; 413 past `max_lines`. Until one line is
    found to be JSON (`find_json`), each is tried, so a file with none can be refused."""
    line_no = 0
    for line in read_raw_lines(stream, max_line_bytes):
        text = line.data.decode("utf-8", errors="replace").strip() if line.complete else None
        if text == "":
            continue
        line_no += 1
        if line_no > max_lines:
            raise InvalidRequest(
                "too_many_lines", f"A batch file may have at most {max_lines} lines.", 413
            )
        if text is None:
            failed = too_long(line, max_line_bytes)
            yield StoredLine(
                line_no, failed.raw, failed.custom_id, failed.error_code, failed.error_message, True
            )
            continue
        if "\x00" in text:  # never valid JSON; Postgres text cannot hold it: store U+FFFD
            parsed, was_json = parse_line(text)
            yield StoredLine(
                line_no,
                text.replace("\x00", "\ufffd"),
                parsed.custom_id,
                parsed.error_code,
                parsed.error_message,
                was_json,
            )
            continue
        is_json = None
        if find_json:
            is_json = _is_json(text)
            find_json = not is_json
        yield StoredLine(line_no, text, is_json=is_json)


def _next_block(lines: Iterator[StoredLine]) -> list[StoredLine]:
    block: list[StoredLine] = []
    size = 0
    for line in lines:
        block.append(line)
        size += len(line.raw)
        if len(block) >= _BLOCK_ROWS or size >= _BLOCK_BYTES:
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
    """Store `stream`'s lines as the text of a new input file; 400 if no line is JSON.
    A line longer than `max_line_bytes` fails alone, and is never held in memory whole."""
    filename = filename.replace("\x00", "\ufffd")  # a multipart header may hold one; text cannot
    if len(filename) > MAX_FILENAME:
        raise InvalidRequest(
            "filename_too_long", f"The file name may have at most {MAX_FILENAME} characters."
        )
    file = File(id=new_id("file-"), tenant=tenant, purpose=FilePurpose.BATCH, filename=filename)
    session.add(file)
    await session.flush()
    lines = size = 0
    any_json = False
    stored = read_lines(stream, max_lines, max_line_bytes)
    while True:
        # Reading and decoding are blocking work: do them off the event loop, a block at a time.
        block = await anyio.to_thread.run_sync(_next_block, stored)
        if not block:
            break
        any_json = any_json or any(line.is_json for line in block)
        lines = block[-1].line_no
        size += sum(len(line.raw) for line in block) + len(block)
        rows = (
            (file.id, s.line_no, s.raw, s.custom_id, s.error_code, s.error_message) for s in block
        )
        await copy_rows(session, FileLine.__table__, _COLUMNS, rows)  # type: ignore[arg-type]
    if not any_json:
        await session.rollback()
        raise InvalidRequest("invalid_file", "The file is not JSONL: no line is a JSON object.")
    file.line_count, file.bytes = lines, size
    await session.commit()
    return file
