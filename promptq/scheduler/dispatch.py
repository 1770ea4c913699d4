"""Delivery: stored, queued jobs go to Redis as messages naming chunks of job ids."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
import structlog
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.constants import TASK_RUN_CHUNK
from promptq.jobs import mark_enqueued, resend
from promptq.models import Job, JobStatus, status_is
from promptq.queues import delivery_queue, queue_step, runs_alone

__all__ = ["dispatch_queued", "publish", "publish_jobs", "publish_marked"]

log = structlog.get_logger(__name__)


def publish(app: Celery, rows: Sequence[tuple[str, str, int, bool]], chunk_size: int) -> list[str]:
    """Send (job id, queue, step, alone) rows as chunk messages, in the given order; a job
    marked `alone` gets a message of its own. Returns the ids sent; raises if the broker is
    unreachable."""
    groups: dict[tuple[str, int, bool], list[str]] = defaultdict(list)
    for job_id, queue, step, alone in rows:
        groups[(queue, step, alone)].append(job_id)
    sent: list[str] = []
    with app.producer_or_acquire() as producer:
        for (queue, step, alone), ids in groups.items():
            size = 1 if alone else chunk_size
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                app.send_task(
                    TASK_RUN_CHUNK,
                    args=[chunk, step, alone],
                    queue=delivery_queue(queue, step),
                    priority=step,
                    producer=producer,
                )
                sent.extend(chunk)
    return sent


async def dispatch_queued(
    session: AsyncSession,
    app: Celery,
    chunk_size: int,
    where: sa.ColumnElement[bool],
    *,
    limit: int | None = None,
) -> int:
    """Publish queued jobs matching `where` and mark them enqueued; returns how many.

    If the broker is down the jobs stay queued and unmarked, and the sweeper sends them later."""
    stmt = (
        sa.select(Job.id, Job.queue, Job.priority, Job.batch_id, Job.lost_count)
        .where(where, status_is(JobStatus.QUEUED))
        .order_by(Job.priority, Job.created_at, Job.line_no)
        .limit(limit)
    )
    rows = [
        (
            r.id,
            r.queue or "",
            queue_step(r.priority, interactive=r.batch_id is None),
            runs_alone(r.lost_count),
        )
        for r in (await session.execute(stmt)).all()
    ]
    if not rows:
        return 0
    try:
        sent = await asyncio.to_thread(publish, app, rows, chunk_size)
    except Exception as exc:  # the broker is down; Postgres still holds every job
        log.warning("dispatch.broker_unavailable", jobs=len(rows), error=str(exc))
        return 0
    await mark_enqueued(session, sent)
    log.info("dispatch.published", jobs=len(sent))
    return len(sent)


async def publish_marked(
    session: AsyncSession,
    app: Celery,
    rows: Sequence[tuple[str, str, int, bool]],
    chunk_size: int,
) -> int:
    """Publish (job id, queue, step, alone) rows of jobs stored already marked enqueued,
    from memory: no query on success. If the broker is down they are unmarked, and the
    sweeper sends them later. Returns how many were sent."""
    if not rows:
        return 0
    try:
        sent = await asyncio.to_thread(publish, app, rows, chunk_size)
    except Exception as exc:  # the broker is down; Postgres still holds every job
        log.warning("dispatch.broker_unavailable", jobs=len(rows), error=str(exc))
        await resend(session, [row[0] for row in rows])
        return 0
    if chunk_size > 1:  # a page of batch lines; not every interactive job
        log.info("dispatch.published", jobs=len(sent))
    return len(sent)


async def publish_jobs(session: AsyncSession, app: Celery, jobs: Sequence[Job]) -> int:
    """Publish jobs just stored already marked enqueued (promptq.jobs.submit), from what is
    in memory: no query on success. If the broker is down they are unmarked, and the
    sweeper sends them later. Returns how many were sent."""
    rows = [
        (job.id, job.queue or "", queue_step(job.priority, interactive=job.batch_id is None), False)
        for job in jobs
    ]
    return await publish_marked(session, app, rows, 1)
