"""A file's content as JSONL bytes, read a page at a time: each page comes from a short
session that is closed before the page is handed to a (maybe slow) client, so a download
never holds a database connection while it waits on the network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from weakref import WeakKeyDictionary

import sqlalchemy as sa

from promptq.db import Database
from promptq.formats import batch_error_line, batch_output_line
from promptq.models import File, FileLine, FilePurpose, Job, JobStatus

__all__ = ["file_content"]

# Rows per page. Input lines are at most `max_line_bytes` each; results are small.
_INPUT_PAGE = 200
_RESULT_PAGE = 1000
# Page reads at once per process (per Database): however many downloads run, they take at
# most this many connections from the pool, and never more than briefly.
_READERS = 4
_readers: WeakKeyDictionary[Database, asyncio.Semaphore] = WeakKeyDictionary()


async def _page(db: Database, stmt: sa.Executable) -> list[Any]:
    gate = _readers.setdefault(db, asyncio.Semaphore(_READERS))
    async with gate, db.session() as session:
        return list((await session.execute(stmt)).all())


async def file_content(db: Database, file: File) -> AsyncIterator[bytes]:
    """The content of `file`, one page of lines per chunk."""
    if file.purpose == FilePurpose.BATCH:
        pages = _input_pages(db, file.id)
    else:
        pages = _result_pages(db, file.batch_id or "", FilePurpose(file.purpose))
    async for page in pages:
        yield page


async def _input_pages(db: Database, file_id: str) -> AsyncIterator[bytes]:
    after = 0
    while True:
        stmt = (
            sa.select(FileLine.line_no, FileLine.raw)
            .where(FileLine.file_id == file_id, FileLine.line_no > after)
            .order_by(FileLine.line_no)
            .limit(_INPUT_PAGE)
        )
        rows = await _page(db, stmt)
        if not rows:
            return
        after = rows[-1].line_no
        yield "".join(f"{row.raw}\n" for row in rows).encode()
        if len(rows) < _INPUT_PAGE:
            return


def _result_line(row: Any) -> str:
    if row.status == JobStatus.SUCCEEDED:
        line = batch_output_line(row.id, row.custom_id, row.response or {})
    else:
        line = batch_error_line(
            row.id,
            row.custom_id,
            row.error_code or "failed",
            row.error_message or "",
            row.error_status,
        )
    return json.dumps(line, separators=(",", ":")) + "\n"


async def _result_pages(db: Database, batch_id: str, purpose: FilePurpose) -> AsyncIterator[bytes]:
    wanted = (
        Job.status == JobStatus.SUCCEEDED
        if purpose is FilePurpose.BATCH_OUTPUT
        else Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED])
    )
    after = -1
    while True:
        stmt = (
            sa.select(
                Job.id,
                Job.line_no,
                Job.custom_id,
                Job.response,
                Job.status,
                Job.error_code,
                Job.error_message,
                Job.error_status,
            )
            .where(Job.batch_id == batch_id, wanted, Job.line_no > after)
            .order_by(Job.line_no)
            .limit(_RESULT_PAGE)
        )
        rows = await _page(db, stmt)
        if not rows:
            return
        after = rows[-1].line_no
        yield "".join(_result_line(row) for row in rows).encode()
        if len(rows) < _RESULT_PAGE:
            return
