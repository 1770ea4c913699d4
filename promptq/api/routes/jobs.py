"""Native jobs: submit one chat request, poll it, cancel it."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.api.deps import (
    AppState,
    CatalogDep,
    CurrentKey,
    IdempotencyDep,
    SessionDep,
    StateDep,
    owned,
)
from promptq.api.schemas import JobCreate, JobOut, job_out
from promptq.catalog import Catalog
from promptq.ids import new_id
from promptq.models import ApiKey, Job, JobStatus, utcnow
from promptq.scheduler.dispatch import dispatch_queued
from promptq.scheduler.routing import queue_for
from promptq.webhooks import check_webhook_url

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobOut, operation_id="create_job")
async def create_job(
    body: JobCreate,
    key: CurrentKey,
    session: SessionDep,
    catalog: CatalogDep,
    state: StateDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Queue one chat request; poll `GET /v1/jobs/{id}` for its result. A retry with the
    same `Idempotency-Key` returns the first response."""
    return await idempotency.respond(
        body.model_dump(mode="json", exclude_unset=True),
        lambda: _submit(body, key, session, catalog, state),
        status_code=202,
    )


async def _submit(
    body: JobCreate, key: ApiKey, session: AsyncSession, catalog: Catalog, state: AppState
) -> JobOut:
    entry = catalog.require(body.model)
    if body.webhook_url:
        await check_webhook_url(body.webhook_url, state.settings)
    job = Job(
        id=new_id("job_"),
        tenant=key.tenant,
        model=entry.name,
        queue=queue_for(entry),
        body=body.request_body(),
        priority=body.priority,
        status=JobStatus.QUEUED,
        attempts=0,
        max_attempts=state.settings.max_attempts,
        job_metadata=body.metadata,
        webhook_url=body.webhook_url or key.webhook_url,
        created_at=utcnow(),
    )
    session.add(job)
    await session.commit()
    await dispatch_queued(session, state.celery, 1, Job.id == job.id)
    await session.refresh(job)
    return job_out(job)


@router.get("/{job_id}", operation_id="get_job")
async def get_job(job_id: str, key: CurrentKey, session: SessionDep) -> JobOut:
    """A job's status, result, usage, cost and error."""
    return job_out(owned(await session.get(Job, job_id), key, "job", job_id))


@router.post("/{job_id}/cancel", operation_id="cancel_job")
async def cancel_job(job_id: str, key: CurrentKey, session: SessionDep) -> JobOut:
    """Cancel a job that has not finished; a finished job is returned unchanged."""
    job = owned(await session.get(Job, job_id), key, "job", job_id)
    await session.execute(
        sa.update(Job)
        .where(Job.id == job.id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .values(
            status=JobStatus.CANCELLED,
            finished_at=utcnow(),
            lease_owner=None,
            error_code="job_cancelled",
            error_message="The job was cancelled.",
        )
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    await session.refresh(job)
    return job_out(job)
