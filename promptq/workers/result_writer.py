"""Write-behind for finished job attempts. The runtime hands each finished attempt to the
writer and waits until it is stored; attempts that finish within a few milliseconds of
each other are stored in one transaction (`jobs.record_finished`: a guarded UPDATE per
job, one INSERT of their ledger rows, their webhook events, one COMMIT), which costs the
worker much less CPU per job than a transaction each. A crash before the COMMIT leaves
every job of the group running under its lease, to be run again; after it, each job is
finished with its ledger row."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from promptq.db import Database
from promptq.jobs import ClaimedJob, Finished, JobFailure, JobOutcome, record_finished

__all__ = ["ResultWriter"]

log = structlog.get_logger(__name__)

_Waiting = tuple[Finished, "asyncio.Future[bool]"]


class ResultWriter:
    """Groups finished attempts into transactions; one per process, on the runtime's loop."""

    def __init__(self, db: Database, *, max_delay: float, max_group: int) -> None:
        self._db = db
        self._max_delay = max_delay
        self._max_group = max_group
        self._pending: list[_Waiting] = []
        self._writing: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.counters = {"groups": 0, "stored": 0, "lost": 0, "regrouped": 0}

    def start(self) -> None:
        """Start writing; call on the loop that will call `write`."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="result-writer")

    @property
    def task(self) -> asyncio.Task[None]:
        """The writing task (once started), for the worker's supervisor."""
        assert self._task is not None, "writer not started"
        return self._task

    async def write(self, job: ClaimedJob, result: JobOutcome | JobFailure) -> bool:
        """Store a finished attempt, grouped with others that finish about now. True if it
        was stored, False if the lease was lost; raises if it could not be written."""
        if self._closed or self._task is None or self._task.done():
            return (await self._store([(job, result)]))[0]
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(((job, result), future))
        self._arrived.set()
        if len(self._pending) >= self._max_group:
            self._full.set()
        return await future

    async def close(self) -> None:
        """Store what is waiting now; later results are each stored on their own."""
        self._closed = True
        self._arrived.set()
        self._full.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        try:
            while self._pending or not self._closed:
                await self._arrived.wait()
                await self._linger()
                self._writing = self._pending[: self._max_group]
                del self._pending[: self._max_group]
                if not self._pending:
                    self._arrived.clear()
                    self._full.clear()
                if self._writing:
                    await self._flush(self._writing)
                self._writing = []
        finally:  # stopped by a bug or a cancel: nobody may wait forever
            if not self._closed:
                log.error("results.writer_stopped", pending=len(self._pending))
            for _, future in self._writing + self._pending:
                _settle(future, RuntimeError("the result writer stopped"))

    async def _linger(self) -> None:
        # The first result of a group waits up to `max_delay` for others to join it.
        if self._closed or len(self._pending) >= self._max_group or self._max_delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._max_delay):
                await self._full.wait()

    async def _store(self, items: list[Finished]) -> list[bool]:
        async with self._db.session() as session:
            stored = await record_finished(session, items)
        self.counters["groups"] += 1
        self.counters["stored"] += sum(stored)
        self.counters["lost"] += len(stored) - sum(stored)
        return stored

    async def _flush(self, group: list[_Waiting]) -> None:
        try:
            stored = await self._store([item for item, _ in group])
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0][1], exc)
                return
            # One unstorable result, or a deadlock with another transaction, must not cost
            # the others: nothing of the group was stored, so each is written on its own.
            log.warning("results.group_failed", jobs=len(group), error=repr(exc))
            self.counters["regrouped"] += 1
            for waiting in group:
                await self._flush([waiting])
            return
        for (_, future), ok in zip(group, stored, strict=True):
            _settle(future, ok)


def _settle(future: asyncio.Future[bool], outcome: bool | Exception) -> None:
    # The job's task may have been cancelled meanwhile (shutdown); its result still counts.
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
