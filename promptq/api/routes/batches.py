"""OpenAI Batches: create from an uploaded file, poll, list, cancel."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.api.cost import admit_batch
from promptq.api.deps import (
    AppState,
    CatalogDep,
    CurrentKey,
    IdempotencyDep,
    SessionDep,
    StateDep,
    owned,
)
from promptq.api.schemas import BatchCreate, BatchList, BatchOut, batch_out
from promptq.batch_retry import retry_batch
from promptq.batches import cancel_batch, create_batch, parse_window
from promptq.catalog import Catalog
from promptq.errors import InvalidRequest
from promptq.files import SUPPORTED_URLS
from promptq.ids import new_id
from promptq.models import ApiKey, Batch, File, FilePurpose, utcnow
from promptq.views import BatchSummary, summarize, summarize_many
from promptq.webhooks import check_webhook_url

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def _priority(body: BatchCreate) -> int:
    if body.priority is not None:
        return body.priority
    raw = (body.metadata or {}).get("priority")
    if raw is None:
        return 5
    if re.fullmatch(r"0*[0-9]", raw) is None:  # not isdigit(): int("²") raises
        raise InvalidRequest("invalid_priority", "metadata.priority must be an integer 0-9.")
    return int(raw)


@router.post("", response_model=BatchOut, operation_id="create_batch")
async def create_batch_route(
    body: BatchCreate,
    key: CurrentKey,
    session: SessionDep,
    catalog: CatalogDep,
    state: StateDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Start a batch over an uploaded file. It answers `validating` at once; the file's
    lines are then checked and queued (in priority order), and the batch goes `in_progress`,
    or `failed` with `errors` when no line can run or the whole file is refused."""
    return await idempotency.respond(
        body.model_dump(mode="json", exclude_unset=True),
        lambda: _start(body, key, session, catalog, state),
    )


async def _start(
    body: BatchCreate, key: ApiKey, session: AsyncSession, catalog: Catalog, state: AppState
) -> BatchOut:
    if body.endpoint not in SUPPORTED_URLS:
        raise InvalidRequest("invalid_endpoint", f"endpoint must be one of {list(SUPPORTED_URLS)}.")
    window = parse_window(body.completion_window)
    if body.webhook_url:
        await check_webhook_url(body.webhook_url, state.settings)
    file = owned(await session.get(File, body.input_file_id), key, "file", body.input_file_id)
    if file.purpose != FilePurpose.BATCH:
        raise InvalidRequest("invalid_file", "input_file_id must name a file of purpose 'batch'.")
    admitted = await admit_batch(session, key)
    now = utcnow()
    batch = Batch(
        id=new_id("batch_"),
        tenant=key.tenant,
        input_file_id=file.id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        priority=_priority(body),
        batch_metadata=body.metadata,
        webhook_url=body.webhook_url or key.webhook_url,
        created_at=now,
        expires_at=now + window,
        api_key_id=key.id,
        budget_id=admitted.budget_id,
        max_cost_usd=None if body.max_cost_usd is None else Decimal(str(body.max_cost_usd)),
        cache_opt_out=body.cache is False,
    )
    batch = await create_batch(session, batch)
    state.validator.start(batch.id)  # reads, checks and queues its lines after answering
    return batch_out(batch, BatchSummary.empty())


@router.get("/{batch_id}", operation_id="get_batch")
async def get_batch(
    batch_id: str, key: CurrentKey, session: SessionDep, state: StateDep
) -> BatchOut:
    """A batch, with request counts and usage derived from its jobs (while a very large
    batch runs, counted at most every few seconds: promptq/api/batch_counts.py)."""
    batch = owned(await session.get(Batch, batch_id), key, "batch", batch_id)
    return batch_out(batch, await state.batch_counts.summary(session, batch))


@router.get("", operation_id="list_batches")
async def list_batches(
    key: CurrentKey,
    session: SessionDep,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """The caller's batches, newest first; `after` is the last id of the previous page."""
    stmt = sa.select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
    if not key.is_admin:
        stmt = stmt.where(Batch.tenant == key.tenant)
    if after:
        cursor = owned(await session.get(Batch, after), key, "batch", after)
        stmt = stmt.where(
            sa.or_(
                Batch.created_at < cursor.created_at,
                sa.and_(Batch.created_at == cursor.created_at, Batch.id < cursor.id),
            )
        )
    rows = list((await session.execute(stmt)).scalars())
    page = rows[:limit]
    summaries = await summarize_many(session, [b.id for b in page])
    data = [batch_out(b, summaries[b.id]) for b in page]
    return BatchList(
        data=data,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(rows) > limit,
    )


@router.post("/{batch_id}/cancel", operation_id="cancel_batch")
async def cancel_batch_route(batch_id: str, key: CurrentKey, session: SessionDep) -> BatchOut:
    """Cancel: lines not yet started end `batch_cancelled`; finished results are kept."""
    batch = owned(await session.get(Batch, batch_id), key, "batch", batch_id)
    batch = await cancel_batch(session, batch)
    return batch_out(batch, await summarize(session, batch.id))


@router.post("/{batch_id}/retry", response_model=BatchOut, operation_id="retry_batch")
async def retry_batch_route(
    batch_id: str,
    key: CurrentKey,
    session: SessionDep,
    catalog: CatalogDep,
    state: StateDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Re-run the lines of a finished batch that got no result (failed, expired or
    cancelled) as a new batch whose `retry_of` names this one. A repeat with the same
    `Idempotency-Key` returns the first response; without one, a retry while another is
    open is 409 `retry_in_progress` naming the open one."""
    return await idempotency.respond(
        {"batch_id": batch_id}, lambda: _retry(batch_id, key, session, catalog, state)
    )


async def _retry(
    batch_id: str, key: ApiKey, session: AsyncSession, catalog: Catalog, state: AppState
) -> BatchOut:
    source = owned(await session.get(Batch, batch_id), key, "batch", batch_id)
    batch = await retry_batch(session, source)
    state.validator.start(batch.id)
    return batch_out(batch, BatchSummary.empty())
