"""A process's waiting room in front of the shared rate limiter.

Each deployment has one lane per process: waiters queue in (band, priority, arrival)
order and one poller asks Redis for the head's admission, sleeping for the wait Redis
reports. So Redis sees one request per grant or per wait, not one per waiting job, and
an interactive job that arrives jumps every bulk job waiting in this process. Across
processes, each lane holds a place in the deployment's shared waiting room, scored by its
head: Redis grants capacity to the lane whose head comes first, so the (band, priority,
arrival) order holds for every waiter of every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from promptq.scheduler.rate_limit import DeploymentLimits, Place, RateLimiter

__all__ = ["AdmissionGate", "Permit", "WaitExpired"]

log = structlog.get_logger(__name__)
OnWait = Callable[[str], Awaitable[None]]


class WaitExpired(Exception):
    """The caller's deadline passed while it waited for capacity."""


@dataclass
class Permit:
    """One admitted call: its slot and the tokens reserved for it; settled once."""

    limits: DeploymentLimits
    slot_id: str
    reserved: int
    #: Admitted by this process's own slow start, not by Redis (see `acquire_local`).
    local: bool = False
    settled: bool = False


@dataclass(order=True)
class _Waiter:
    order: tuple[int, int, int]
    score: int = field(compare=False)  # its place in the shared waiting room
    tokens: int = field(compare=False)
    interactive: bool = field(compare=False)
    slot_id: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


@dataclass
class _Lane:
    limits: DeploymentLimits
    heap: list[_Waiter] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    reason: str = ""
    in_room: bool = False  # this lane has a place in the shared waiting room


@dataclass(order=True)
class _Entrant:
    order: tuple[int, int, int]
    interactive: bool = field(compare=False)
    future: asyncio.Future[bool] = field(compare=False)


class _SlowStart:
    """An in-process concurrency cap that grows by one per success. Waiters go in (band,
    priority, arrival) order, and bulk calls keep `reserve` of the cap free for
    interactive ones, as the shared limits do."""

    def __init__(self, start: int, ceiling: int, reserve: float) -> None:
        self.cap, self.ceiling, self.reserve = start, ceiling, reserve
        self.in_flight = 0
        self.shared = False  # the deployment is admitted through Redis from now on
        self._waiters: list[_Entrant] = []

    def _room_for(self, interactive: bool) -> bool:
        limit = self.cap if interactive else max(1, int(self.cap * (1 - self.reserve)))
        return self.in_flight < limit

    async def enter(
        self, order: tuple[int, int, int], interactive: bool, max_wait: float | None = None
    ) -> bool:
        """Wait for room; False if the deployment went shared meanwhile; WaitExpired after
        `max_wait` seconds (None: never)."""
        if self.shared:
            return False
        ahead = bool(self._waiters) and self._waiters[0].order < order
        if self._room_for(interactive) and not ahead:
            self.in_flight += 1
            return True
        entrant = _Entrant(order, interactive, asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiters, entrant)
        waiter = entrant.future
        try:
            # True: a leaving call handed its slot over.
            return await asyncio.wait_for(asyncio.shield(waiter), max_wait)
        except TimeoutError:
            # Handed over just as the wait ended: hand it on.
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.leave(ok=False)
            raise WaitExpired("no room in the slow start in time") from None
        finally:
            if not waiter.done():
                waiter.cancel()  # `leave` skips it

    def leave(self, *, ok: bool) -> None:
        self.in_flight -= 1
        if ok:
            self.cap = min(self.ceiling, self.cap + 1)
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                heapq.heappop(self._waiters)
                continue
            if not self._room_for(head.interactive):
                return
            heapq.heappop(self._waiters)
            self.in_flight += 1
            head.future.set_result(True)

    def share(self) -> None:
        self.shared = True
        for entrant in self._waiters:
            if not entrant.future.done():
                entrant.future.set_result(False)
        self._waiters.clear()


def _next_score(heap: list[_Waiter]) -> int | None:
    # The waiter after the head is one of its children in the heap.
    return min((w.score for w in heap[1:3] if not w.future.done()), default=None)


def _remove(heap: list[_Waiter], waiter: _Waiter) -> None:
    if heap and heap[0] is waiter:
        heapq.heappop(heap)
        return
    heap.remove(waiter)
    heapq.heapify(heap)


class AdmissionGate:
    """Admits calls per deployment in priority order; create it on the loop that uses it."""

    def __init__(self, limiter: RateLimiter, *, poll_max: float = 1.0) -> None:
        self.limiter = limiter
        self.poll_max = poll_max
        self._lanes: dict[str, _Lane] = {}
        self._seq = itertools.count()
        self._expected: Counter[str] = Counter()
        self._local: dict[str, _SlowStart] = {}
        self.lane_id = uuid.uuid4().hex[:16]  # this process's lanes in the waiting rooms

    def waiting(self, key: str) -> int:
        """How many calls of this process wait for deployment `key` (or chose it and are
        about to ask)."""
        lane = self._lanes.get(key)
        return (len(lane.heap) if lane else 0) + self._expected[key]

    def expect(self, key: str) -> None:
        """A call chose deployment `key` and will ask for it next: count it as waiting."""
        self._expected[key] += 1

    async def acquire(
        self,
        limits: DeploymentLimits,
        tokens: int,
        *,
        band: int,
        priority: int,
        slot_id: str,
        interactive: bool,
        on_wait: OnWait | None = None,
        report_after: float = 1.0,
        max_wait: float | None = None,
    ) -> Permit:
        """Wait until the call may be sent. `on_wait(reason)` runs once if that takes
        longer than `report_after`; WaitExpired after `max_wait` seconds (None: never)."""
        if self._expected[limits.key] > 0:
            self._expected[limits.key] -= 1
        lane = self._lanes.get(limits.key)
        if lane is None:
            lane = self._lanes[limits.key] = _Lane(limits)
        lane.limits = limits
        waiter = _Waiter(
            (band, priority, next(self._seq)),
            Place.score_of(band, priority, time.time()),
            tokens,
            interactive,
            slot_id,
            asyncio.get_running_loop().create_future(),
        )
        heapq.heappush(lane.heap, waiter)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._pump(lane))
        elif lane.heap[0] is waiter:
            lane.wake.set()  # jumps the queue: ask for it now, not after the current wait
        await self._wait(lane, waiter, on_wait, report_after, max_wait)
        return Permit(limits, slot_id, tokens)

    async def _wait(
        self,
        lane: _Lane,
        waiter: _Waiter,
        on_wait: OnWait | None,
        report_after: float,
        max_wait: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        end = None if max_wait is None else loop.time() + max_wait
        try:
            if on_wait is not None:
                first = report_after if end is None else min(report_after, end - loop.time())
                done, _ = await asyncio.wait({waiter.future}, timeout=max(0.0, first))
                if done:
                    return
                await on_wait(lane.reason or "rate_limited")
            left = None if end is None else max(0.0, end - loop.time())
            await asyncio.wait_for(asyncio.shield(waiter.future), left)
        except TimeoutError:
            raise WaitExpired(f"no capacity on {lane.limits.key} in time") from None
        finally:
            if not waiter.future.done():
                waiter.future.cancel()  # the poller drops it

    def local_in_flight(self, key: str) -> int:
        """Calls in flight under this process's slow start for deployment `key`."""
        state = self._local.get(key)
        return state.in_flight if state else 0

    async def share(self, key: str) -> None:
        """Deployment `key` is admitted through Redis from now on: calls waiting in its
        in-process slow start go there too."""
        state = self._local.get(key)
        if state is not None:
            state.share()

    async def acquire_local(
        self,
        limits: DeploymentLimits,
        start: int,
        ceiling: int,
        *,
        band: int,
        priority: int,
        interactive: bool,
        max_wait: float | None = None,
    ) -> Permit | None:
        """Admit a call to a deployment with no declared limits that has not pushed back yet:
        a slow start kept in this process (`start` calls in flight, one more per success
        up to `ceiling`), no Redis round trip, waiters in (band, priority, arrival) order.
        After its first 429 the deployment goes through `acquire` like the others (None:
        it did so while this call waited). WaitExpired after `max_wait` seconds (None:
        never)."""
        state = self._local.get(limits.key)
        if state is None:
            reserve = self.limiter.settings.bulk_reserve
            state = self._local[limits.key] = _SlowStart(start, ceiling, reserve)
        if not await state.enter((band, priority, next(self._seq)), interactive, max_wait):
            return None
        return Permit(limits, "", 0, local=True)

    async def settle(self, permit: Permit, used_tokens: int | None) -> None:
        """Give back the slot and the tokens the call did not use (None: none used); a
        permit already settled is left alone."""
        if permit.settled:
            return
        permit.settled = True
        if permit.local:
            self._local[permit.limits.key].leave(ok=used_tokens is not None)
            return
        await self.limiter.settle(permit.limits, permit.slot_id, permit.reserved, used_tokens)
        lane = self._lanes.get(permit.limits.key)
        if lane is not None and lane.reason == "concurrency":
            lane.wake.set()

    async def _pump(self, lane: _Lane) -> None:
        while True:
            await self._serve(lane)
            if lane.in_room:  # no waiter left here: leave the room to the others
                lane.in_room = False
                try:
                    await self.limiter.leave_room(lane.limits, self.lane_id)
                except Exception:  # it lapses by itself
                    log.warning("rate_limit.redis_error", deployment=lane.limits.key)
            if not lane.heap:  # none came meanwhile
                return

    async def _serve(self, lane: _Lane) -> None:
        while lane.heap:
            head = lane.heap[0]
            if head.future.done():  # its caller gave up
                heapq.heappop(lane.heap)
                continue
            place = Place(self.lane_id, head.score, _next_score(lane.heap))
            try:
                decision = await self.limiter.try_acquire(
                    lane.limits,
                    head.tokens,
                    interactive=head.interactive,
                    slot_id=head.slot_id,
                    place=place,
                )
            except Exception:  # Redis down: the jobs wait, they do not fail
                log.warning("rate_limit.redis_error", deployment=lane.limits.key, exc_info=True)
                await asyncio.sleep(self.poll_max)
                continue
            lane.in_room = not decision.granted or place.next_score is not None
            if decision.granted:
                # A more urgent waiter may have been pushed above `head` meanwhile.
                _remove(lane.heap, head)
                if head.future.done():  # gave up while we asked: hand the capacity back
                    await self.limiter.settle(lane.limits, head.slot_id, head.tokens, None)
                else:
                    head.future.set_result(None)
                continue
            lane.reason = decision.reason
            lane.wake.clear()
            delay = min(max(decision.wait, 0.002), self.poll_max)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lane.wake.wait(), delay)
