"""The GPU engine's running slots: bulk requests take what interactive work leaves, an
interactive request that finds no free slot preempts the lowest-priority bulk request, and
a preempted request is first in line for the next bulk slot.

vLLM preempts only under KV-cache pressure, never for priority alone, so without this an
interactive request waits in vLLM's queue until a bulk request ends."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass

__all__ = ["EngineSlots", "Running"]


@dataclass
class Running:
    """A bulk request holding a running slot, as far as this worker knows."""

    request_id: str  # vLLM's request id, what `AsyncLLM.abort` takes
    priority: int
    tokens: int = 0  # generated so far: what a preemption wastes
    preempted_for: str | None = None  # the interactive job it was aborted for
    order: int = 0  # arrival at the slots; the latest is preempted first among equals

    @property
    def preempted(self) -> bool:
        return self.preempted_for is not None


_Waiter = tuple[int, int, int, "asyncio.Future[None]", Running]


class EngineSlots:
    """Who runs in the engine's `max_num_seqs` slots; one per engine, used on its loop only."""

    def __init__(self, max_num_seqs: int, interactive_slots: int, preempt: bool) -> None:
        self._max = max_num_seqs
        # At least one slot stays open to bulk work, whatever the models file says.
        self._kept_free = min(interactive_slots, max_num_seqs - 1)
        self._preempt = preempt
        self._bulk: dict[str, Running] = {}
        self._interactive = 0
        self._waiting: list[_Waiter] = []  # a heap: preempted first, then priority, arrival
        self._order = itertools.count()

    @property
    def bulk_limit(self) -> int:
        """How many bulk requests run at once while no interactive request runs."""
        return self._max - self._kept_free

    @property
    def running_bulk(self) -> int:
        return len(self._bulk)

    async def acquire(self, running: Running, *, first: bool = False) -> None:
        """Wait for a bulk slot; `first` puts a preempted request ahead of every other."""
        running.order = next(self._order)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._waiting, (0 if first else 1, running.priority, running.order, future, running)
        )
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then cancelled
                self.release(running)
            raise

    def release(self, running: Running, *, wake: bool = True) -> None:
        """Give a bulk slot back. A preempted request gives it back with `wake` False and
        asks again at once (`acquire(first=True)`), so no other request takes its turn."""
        if self._bulk.pop(running.request_id, None) is not None and wake:
            self._wake()

    def enter_interactive(self, job_id: str) -> Running | None:
        """Count an interactive request in; returns the bulk request to abort so that it
        starts at once, or None when a slot is free (or preemption is off)."""
        self._interactive += 1
        if not self._preempt:
            return None
        active = [r for r in self._bulk.values() if not r.preempted]
        if len(active) + self._interactive <= self._max or not active:
            return None
        # The lowest priority (highest number); among those one already generating (a
        # request not yet in the engine frees nothing when aborted), with the fewest tokens.
        victim = max(active, key=lambda r: (r.priority, r.tokens > 0, -r.tokens, r.order))
        victim.preempted_for = job_id
        return victim

    def exit_interactive(self) -> None:
        self._interactive -= 1
        self._wake()

    def _room(self) -> int:
        # Running interactive requests use the kept-free slots first, then bulk ones.
        return self._max - max(self._kept_free, self._interactive) - len(self._bulk)

    def _wake(self) -> None:
        while self._waiting and self._room() > 0:
            *_, future, running = heapq.heappop(self._waiting)
            if future.done():  # its waiter was cancelled
                continue
            self._bulk[running.request_id] = running
            future.set_result(None)
