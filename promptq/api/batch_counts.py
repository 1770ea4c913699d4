"""A running batch's counts, kept briefly when counting them is slow.

`GET /v1/batches/{id}` derives `request_counts` and usage from the batch's jobs with one
GROUP BY. For a batch of a few thousand lines that takes milliseconds and is always fresh.
For a million-line batch it took 4.3 s, and a client polling every second kept Postgres
busy counting instead of storing results. So a count that took `t` seconds is reused for
`10 * t` seconds (at most `MAX_AGE_SECONDS`) while the batch runs: the counts lag by at
most about ten times what one count costs. A finished batch is always counted afresh."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from promptq.models import TERMINAL_BATCH_STATUSES, Batch
from promptq.views import BatchSummary, summarize

__all__ = ["MAX_AGE_SECONDS", "BatchCounts"]

MAX_AGE_SECONDS = 30.0
_REUSE_FACTOR = 10.0
_WORTH_KEEPING_SECONDS = 0.05  # counts faster than this are made on every read
_MAX_KEPT = 1000


@dataclass
class BatchCounts:
    """Per API process: batch id -> (summary, monotonic time it may be used until)."""

    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _kept: dict[str, tuple[BatchSummary, float]] = field(default_factory=dict, repr=False)

    async def summary(self, session: AsyncSession, batch: Batch) -> BatchSummary:
        """The batch's summary: a recent one while it runs and counting is slow."""
        if batch.status in TERMINAL_BATCH_STATUSES:
            self._kept.pop(batch.id, None)
            return await summarize(session, batch.id)
        kept = self._kept.get(batch.id)
        if kept is not None and self.clock() < kept[1]:
            return kept[0]
        started = self.clock()
        summary = await summarize(session, batch.id)
        took = self.clock() - started
        if took >= _WORTH_KEEPING_SECONDS:
            if len(self._kept) >= _MAX_KEPT:
                self._kept.clear()
            self._kept[batch.id] = (
                summary,
                self.clock() + min(MAX_AGE_SECONDS, took * _REUSE_FACTOR),
            )
        else:
            self._kept.pop(batch.id, None)
        return summary
