"""Webhook events of job transitions: written to the outbox in the transition's own
transaction, with the job as it is now stored."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.models import Job
from promptq.views import job_out
from promptq.webhooks import emit

__all__ = ["emit_job_events"]


async def emit_job_events(session: AsyncSession, events: Mapping[str, str]) -> None:
    """Queue `events` (job id -> event type, in that order) for the jobs that have a
    webhook_url, in the session's transaction."""
    if not events:
        return
    rows = await session.scalars(
        sa.select(Job).where(Job.id.in_(list(events))).execution_options(populate_existing=True)
    )
    by_id = {row.id: row for row in rows}
    for job_id, event_type in events.items():
        row = by_id.get(job_id)
        if row is not None and row.webhook_url:
            data = job_out(row).model_dump(mode="json")
            emit(session, tenant=row.tenant, event_type=event_type, url=row.webhook_url, data=data)
