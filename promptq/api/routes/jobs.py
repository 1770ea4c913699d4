"""Native jobs: submit one chat request, poll it, cancel it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.api.cost import admit_job, serving_entry
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
from promptq.deadline import job_deadline
from promptq.ids import new_id
from promptq.jobs import cancel, submit
from promptq.models import ApiKey, Job, utcnow
from promptq.queues import queue_for
from promptq.scheduler.dispatch import publish_jobs
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
    request = body.request_body()
    now = utcnow()
    deadline = job_deadline(body.deadline, body.timeout_seconds, now)
    task = (body.metadata or {}).get("task")
    entry, chain = serving_entry(catalog, body.model, request, task, state.settings)
    if body.webhook_url:
        await check_webhook_url(body.webhook_url, state.settings)
    admitted = await admit_job(session, key, chain, request, state.settings)
    job = submit(
        session,
        Job(
            id=new_id("job_"),
            tenant=key.tenant,
            model=body.model,  # a model, or a router resolved per attempt
            queue=queue_for(entry),
            body=request,
            priority=body.priority,
            max_attempts=state.settings.max_attempts,
            job_metadata=body.metadata,
            webhook_url=body.webhook_url or key.webhook_url,
            created_at=now,
            deadline_at=deadline,
            api_key_id=key.id,
            budget_id=admitted.budget_id,
            cache_opt_out=body.cache is False,
        ),
    )
    await session.commit()  # the one transaction: the row, already marked enqueued
    await publish_jobs(session, state.celery, [job])
    return job_out(job)


@router.get("/{job_id}", operation_id="get_job")
async def get_job(job_id: str, key: CurrentKey, session: SessionDep) -> JobOut:
    """A job's status, result, usage, cost and error."""
    return job_out(owned(await session.get(Job, job_id), key, "job", job_id))


@router.post("/{job_id}/cancel", operation_id="cancel_job")
async def cancel_job(job_id: str, key: CurrentKey, session: SessionDep) -> JobOut:
    """Cancel a job that has not finished (`job.cancelled` is sent to its webhook); a
    finished job is returned unchanged."""
    job = owned(await session.get(Job, job_id), key, "job", job_id)
    await cancel(session, job.id)
    await session.refresh(job)
    return job_out(job)
