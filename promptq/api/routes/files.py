"""OpenAI Files: upload a batch input, read file objects and contents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Form, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.api.deps import AppState, CurrentKey, IdempotencyDep, SessionDep, StateDep, owned
from promptq.api.limits import TenantSlots
from promptq.api.schemas import FileOut, file_out
from promptq.errors import InvalidRequest
from promptq.file_content import file_content
from promptq.files import store_upload
from promptq.idempotency import file_sha256
from promptq.models import ApiKey, File, FilePurpose
from promptq.retention import delete_file

router = APIRouter(prefix="/v1/files", tags=["files"])


class FileDeleted(BaseModel):
    """OpenAI's answer to a file deletion."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


@router.post("", response_model=FileOut, operation_id="create_file")
async def create_file(
    file: UploadFile,
    purpose: Annotated[str, Form()],
    key: CurrentKey,
    session: SessionDep,
    state: StateDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Upload a JSONL batch input, stored as its lines' text (400 if no line is JSON); each
    line is parsed and checked when a batch is validated, and a bad one fails alone.
    At most `tenant_max_uploads` per tenant are parsed at once (429 beyond)."""
    content = None
    if idempotency.key is not None:  # the upload is spooled to disk: hash it from there
        content = {
            "sha256": await anyio.to_thread.run_sync(file_sha256, file.file),
            "purpose": purpose,
            "filename": file.filename,
        }
    slots = TenantSlots(state.redis)
    slot = await slots.acquire(key.tenant, "uploads", state.settings.tenant_max_uploads)
    try:
        return await idempotency.respond(
            content, lambda: _store(file, purpose, key, session, state)
        )
    finally:
        await slots.release(slot)


async def _store(
    file: UploadFile, purpose: str, key: ApiKey, session: AsyncSession, state: AppState
) -> FileOut:
    if purpose != FilePurpose.BATCH:
        raise InvalidRequest("invalid_purpose", "Only purpose 'batch' can be uploaded.")
    # Starlette spooled the upload to a temporary file; parse it from there, line by line.
    await anyio.to_thread.run_sync(file.file.seek, 0)
    stored = await store_upload(
        session,
        key.tenant,
        file.filename or "upload.jsonl",
        file.file,
        state.settings.max_file_lines,
        state.settings.max_line_bytes,
    )
    return file_out(stored)


@router.get("/{file_id}", operation_id="get_file")
async def get_file(file_id: str, key: CurrentKey, session: SessionDep) -> FileOut:
    """A file object."""
    return file_out(owned(await session.get(File, file_id), key, "file", file_id))


@router.get("/{file_id}/content", operation_id="get_file_content", response_class=StreamingResponse)
async def get_file_content(
    file_id: str, key: CurrentKey, session: SessionDep, state: StateDep
) -> StreamingResponse:
    """A file's JSONL content, streamed: input lines, or a batch's output or error lines.
    At most `tenant_max_downloads` per tenant at once (429 beyond)."""
    file = owned(await session.get(File, file_id), key, "file", file_id)
    # The request's session (shared with the key lookup) goes back to the pool now: the
    # content is read a page at a time, each from a short session of its own, so a client
    # that reads slowly, or not at all, holds no database connection.
    await session.close()
    slots = TenantSlots(state.redis)
    slot = await slots.acquire(key.tenant, "downloads", state.settings.tenant_max_downloads)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for page in file_content(state.db, file):
                yield page
                await slots.renew(slot)
        finally:
            await slots.release(slot)

    return StreamingResponse(chunks(), media_type="application/jsonl")


@router.delete(
    "/{file_id}",
    operation_id="delete_file",
    responses={409: {"description": "A batch that has not finished reads this file."}},
)
async def delete_file_route(file_id: str, key: CurrentKey, state: StateDep) -> FileDeleted:
    """Delete a file: an upload with its lines, or a batch's output or error file (the
    batch's jobs stay). Refused while a batch that has not finished reads the file."""
    async with state.db.session() as session:
        file = owned(await session.get(File, file_id), key, "file", file_id)
    await delete_file(state.db, file)  # 409 file_in_use while a running batch reads it
    return FileDeleted(id=file.id)
