"""What a worker does besides running jobs, each a loop the supervisor watches: the
heartbeat (renew leases, log the counters, refresh the worker's record in Redis) and the
batch checker (finalize batches whose last jobs finished here); and `drain`, the burst
mode that feeds the runtime from Postgres until its queues are empty."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from redis.exceptions import RedisError

from promptq.batches import finalize_batch
from promptq.jobs import JobErrorCode, renew
from promptq.models import Job, JobStatus
from promptq.queues import queue_step
from promptq.workers import beacon

if TYPE_CHECKING:
    from promptq.config import Settings
    from promptq.workers.runtime import WorkerRuntime

__all__ = ["BEATS_TO_LIVE", "batch_checker", "beat_interval", "drain", "forget_beat", "heartbeat"]

log = structlog.get_logger(__name__)

#: A worker's record outlives this many missed beats; `--check` allows as many.
BEATS_TO_LIVE = 3
_BATCH_CHECK_SECONDS = 0.5


def beat_interval(settings: Settings) -> float:
    """Seconds between heartbeats: a third of the lease, at most 10 s."""
    return min(settings.lease_seconds / 3, 10.0)


async def heartbeat(runtime: WorkerRuntime) -> None:
    """Every `heartbeat_seconds`: renew this worker's leases, log its counters, and record
    it as alive in Redis. A failed database or Redis call is logged and retried next beat
    (leases outlive several beats); anything else ends the task, and the worker."""
    while True:
        renewed = 0
        running = runtime.running_ids
        if running:
            try:
                async with runtime.db.session() as session:
                    renewed = await renew(
                        session, runtime.owner, running, runtime.settings.lease_seconds
                    )
            except (OSError, sa.exc.SQLAlchemyError):
                log.exception("worker.heartbeat_failed", owner=runtime.owner)
        snapshot = runtime.snapshot()
        log.info("worker.heartbeat", owner=runtime.owner, renewed=renewed, **snapshot)
        try:
            ttl = runtime.heartbeat_seconds * BEATS_TO_LIVE
            # In a task of its own (wait_for): a cancel that lands mid-command is not
            # swallowed by redis-py, so the heartbeat can always be stopped.
            await asyncio.wait_for(
                beacon.beat(runtime.redis, runtime.kind, runtime.owner, snapshot, ttl), 5.0
            )
        except (OSError, RedisError, TimeoutError) as exc:
            log.warning("worker.beacon_failed", owner=runtime.owner, error=repr(exc))
        await asyncio.sleep(runtime.heartbeat_seconds)


async def forget_beat(runtime: WorkerRuntime) -> None:
    """A clean stop removes the worker's record at once (best effort)."""
    try:
        await beacon.forget(runtime.redis, runtime.kind, runtime.owner)
    except Exception as exc:  # Redis down at shutdown: the record expires by itself
        log.warning("worker.beacon_failed", owner=runtime.owner, error=repr(exc))


async def batch_checker(runtime: WorkerRuntime) -> None:
    """Finalize batches whose jobs finished here; debounced, not once per job. A failed
    finalize is logged; the sweeper finalizes any batch missed."""
    while True:
        await asyncio.sleep(_BATCH_CHECK_SECONDS)
        batches, runtime.batches_to_check = runtime.batches_to_check, set()
        for batch_id in batches:
            try:
                async with runtime.db.session() as session:
                    await finalize_batch(session, batch_id)
            except (OSError, sa.exc.SQLAlchemyError):
                log.exception("batch.finalize_failed", batch_id=batch_id)


async def _queued(runtime: WorkerRuntime, queues: list[str], limit: int) -> list[Any]:
    stmt = (
        sa.select(Job.id, Job.priority, Job.batch_id, Job.error_code)
        .where(Job.status == JobStatus.QUEUED, Job.queue.in_(queues))
        .order_by(Job.priority, Job.created_at, Job.line_no)
        .limit(limit)
    )
    async with runtime.db.session() as session:
        return list((await session.execute(stmt)).all())


def _chunks(rows: list[Any]) -> list[tuple[list[str], int, bool]]:
    # Consecutive rows of one priority step share a chunk, as the dispatcher would send
    # them; a job whose worker was lost gets one of its own.
    chunks: list[tuple[list[str], int, bool]] = []
    for row in rows:
        alone = row.error_code == JobErrorCode.WORKER_LOST
        step = queue_step(row.priority, interactive=row.batch_id is None)
        if chunks and not alone and not chunks[-1][2] and chunks[-1][1] == step:
            chunks[-1][0].append(row.id)
        else:
            chunks.append(([row.id], step, alone))
    return chunks


async def drain(runtime: WorkerRuntime, queues: list[str]) -> dict[str, int]:
    """Burst mode: claim the queued jobs of `queues` straight from Postgres, in priority
    order, a chunk at a time (under the same admission rules as messages), until none is
    queued and none runs here. Deterministic: no broker involved."""
    chunk = runtime.settings.chunk_size
    while True:
        runtime.supervisor.check()
        rows = await _queued(runtime, queues, chunk)
        if not rows:
            await runtime.wait_idle()
            runtime.supervisor.check()
            if not await _queued(runtime, queues, 1):
                break
            continue
        for ids, step, alone in _chunks(rows):
            await runtime.admit_here(ids, step, alone)
    # The batches this run finished are final before it returns.
    for batch_id in sorted(runtime.batches_to_check):
        async with runtime.db.session() as session:
            await finalize_batch(session, batch_id)
    runtime.batches_to_check.clear()
    log.info("worker.idle", owner=runtime.owner, **runtime.snapshot())
    return dict(runtime.counters)
