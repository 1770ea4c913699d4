"""The one way tests make job rows: through the `submit` transition, as POST /v1/jobs
stores a job (queued, marked enqueued), optionally claimed by a worker."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from promptq.db import Database
from promptq.jobs import ClaimedJob, JobOutcome, claim, submit
from promptq.models import Job, utcnow

__all__ = ["OUTCOME", "add_jobs", "claimed_jobs", "get_job", "outcome"]


def outcome(content: str = "hi") -> JobOutcome:
    """A finished attempt's result."""
    return JobOutcome(
        content=content,
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=2,
        cost_usd=Decimal("0.0000015"),
        response={"object": "chat.completion", "content": content},
    )


OUTCOME = outcome()


async def add_jobs(
    db: Database,
    *job_ids: str,
    model: str = "m",
    queue: str = "q",
    max_attempts: int = 3,
    webhook_url: str | None = None,
    priority: int = 5,
    body: dict[str, Any] | None = None,
) -> None:
    """Store queued native jobs (tenant 't')."""
    async with db.session() as session:
        for job_id in job_ids:
            job = Job(
                id=job_id,
                tenant="t",
                model=model,
                queue=queue,
                body=body if body is not None else {"messages": []},
                priority=priority,
                max_attempts=max_attempts,
                webhook_url=webhook_url,
                created_at=utcnow(),
            )
            submit(session, job)
        await session.commit()


async def claimed_jobs(
    db: Database, job_ids: list[str], owner: str = "w1", webhook_url: str | None = None
) -> dict[str, ClaimedJob]:
    """Store queued jobs and claim them for `owner`; by id."""
    await add_jobs(db, *job_ids, webhook_url=webhook_url)
    async with db.session() as session:
        return {job.id: job for job in await claim(session, job_ids, owner, 60)}


async def get_job(db: Database, job_id: str = "job_1") -> Job:
    """The job row as stored now."""
    async with db.session() as session:
        job = await session.get(Job, job_id)
        assert job is not None, job_id
        return job
