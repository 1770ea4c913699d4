"""Waiting reasons of running jobs, written to Postgres in groups: hundreds of jobs start
to wait on a rate limit at the same moment, and each must not take a connection of its
own. A note that cannot be written is logged and dropped: it never fails a job. And the
end of waiting: a line that outlived its batch's window expires the batch."""

from __future__ import annotations

import asyncio

import structlog

from promptq.batches import expire_batch
from promptq.db import Database
from promptq.jobs import ClaimedJob, note_waiting
from promptq.models import Batch

__all__ = ["WaitingNotes", "expire_window"]

log = structlog.get_logger(__name__)


class WaitingNotes:
    """Collects (job, reason) notes and writes the latest of each job every `interval`."""

    def __init__(self, db: Database, interval: float = 0.5) -> None:
        self._db = db
        self._interval = interval
        self._pending: dict[str, tuple[ClaimedJob, str | None]] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, job: ClaimedJob, reason: str | None) -> None:
        """Record that `job` waits for `reason` (None: it goes on); written soon."""
        self._pending[job.id] = (job, reason)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_later())

    def forget(self, job_id: str) -> None:
        """The job finished: its final write clears the reason anyway."""
        self._pending.pop(job_id, None)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._interval)
        await self.flush()

    async def flush(self) -> None:
        notes, self._pending = list(self._pending.values()), {}
        if not notes:
            return
        try:
            async with self._db.session() as session:
                await note_waiting(session, notes)
        except Exception:
            log.warning("job.waiting_note_failed", jobs=len(notes), exc_info=True)


async def expire_window(db: Database, batch_id: str) -> None:
    """A line waited past its batch's window, maybe before the sweeper saw the window end:
    expire the batch now (guarded, a no-op for a batch that already ended), so it ends
    `expired` and its other waiting lines `batch_expired`, not `completed`."""
    try:
        async with db.session() as session:
            batch = await session.get(Batch, batch_id)
            if batch is not None:
                await expire_batch(session, batch)
    except Exception:  # the sweeper expires it on its next pass
        log.warning("batch.expire_failed", batch_id=batch_id, exc_info=True)
