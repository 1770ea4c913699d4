"""The GPU engine's running slots: kept-free slots, preemption of the lowest-priority bulk
request, and the preempted request first in line."""

from __future__ import annotations

import asyncio

from promptq.workers.engine_slots import EngineSlots, Running


async def _fill(slots: EngineSlots, count: int, priority: int = 10) -> list[Running]:
    running = [Running(f"bulk-{i}", priority) for i in range(count)]
    for record in running:
        await slots.acquire(record)
    return running


def test_bulk_requests_leave_the_kept_free_slots_alone() -> None:
    async def scenario() -> tuple[int, bool]:
        slots = EngineSlots(max_num_seqs=4, interactive_slots=1, preempt=True)
        await _fill(slots, 3)
        extra = asyncio.create_task(slots.acquire(Running("bulk-3", 10)))
        await asyncio.sleep(0)
        return slots.running_bulk, extra.done()

    # Given 4 slots, one kept free: the fourth bulk request waits
    assert asyncio.run(scenario()) == (3, False)


def test_an_interactive_request_with_no_free_slot_preempts_the_lowest_priority_bulk() -> None:
    async def scenario() -> tuple[Running | None, Running | None, Running | None]:
        slots = EngineSlots(max_num_seqs=4, interactive_slots=1, preempt=True)
        low, high, fresh = Running("low", 12), Running("high", 5), Running("fresh", 12)
        for record in (low, high, fresh):
            await slots.acquire(record)
        low.tokens, high.tokens = 40, 3  # fresh has not generated yet
        first = slots.enter_interactive("urgent-1")  # takes the kept-free slot
        second = slots.enter_interactive("urgent-2")  # no slot left
        third = slots.enter_interactive("urgent-3")
        return first, second, third

    # Given a full engine when interactive requests arrive
    first, second, third = asyncio.run(scenario())
    # Then the first uses the kept-free slot, the second preempts the priority-12 request
    # already generating, the third the other priority-12 one, never the priority-5 one
    assert first is None
    assert second is not None and second.request_id == "low"
    assert second.preempted_for == "urgent-2"
    assert third is not None and third.request_id == "fresh"


def test_without_preemption_the_interactive_request_waits_for_a_slot() -> None:
    async def scenario() -> Running | None:
        slots = EngineSlots(max_num_seqs=2, interactive_slots=0, preempt=False)
        await _fill(slots, 2)
        return slots.enter_interactive("urgent")

    assert asyncio.run(scenario()) is None


def test_a_preempted_request_is_first_in_line_and_interactive_work_holds_its_slot() -> None:
    async def scenario() -> list[str]:
        slots = EngineSlots(max_num_seqs=2, interactive_slots=0, preempt=True)
        a, b = await _fill(slots, 2)
        admitted: list[str] = []

        async def wait(record: Running, first: bool = False) -> None:
            await slots.acquire(record, first=first)
            admitted.append(record.request_id)

        later = asyncio.create_task(wait(Running("queued", 1)))  # a better priority
        await asyncio.sleep(0)
        victim = slots.enter_interactive("urgent")
        assert victim is b  # the latest of equal priority
        slots.release(victim)  # its stream ended with the abort
        again = asyncio.create_task(wait(Running("bulk-1-p1", 10), first=True))
        await asyncio.sleep(0)
        admitted.append("-")  # nothing admitted while the interactive request runs
        slots.exit_interactive()
        await asyncio.sleep(0)
        slots.release(a)
        await asyncio.gather(later, again)
        return admitted

    # Given a preempted request waiting again, behind an interactive one, beside a waiting
    # bulk request of better priority: it gets the next slot, then the other
    assert asyncio.run(scenario()) == ["-", "bulk-1-p1", "queued"]


def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    async def scenario() -> tuple[int, list[str]]:
        slots = EngineSlots(max_num_seqs=1, interactive_slots=0, preempt=True)
        (holder,) = await _fill(slots, 1)
        gone = asyncio.create_task(slots.acquire(Running("gone", 10)))
        kept = Running("kept", 10)
        waiting = asyncio.create_task(slots.acquire(kept))
        await asyncio.sleep(0)
        gone.cancel()
        slots.release(holder)
        await waiting
        return slots.running_bulk, [kept.request_id]

    assert asyncio.run(scenario()) == (1, ["kept"])


def test_a_preempted_request_keeps_its_turn_when_a_slot_is_already_free() -> None:
    async def scenario() -> list[str]:
        slots = EngineSlots(max_num_seqs=2, interactive_slots=0, preempt=True)
        _, victim = await _fill(slots, 2)
        admitted: list[str] = []

        async def wait(record: Running) -> None:
            await slots.acquire(record)
            admitted.append(record.request_id)

        other = asyncio.create_task(wait(Running("other", 1)))
        await asyncio.sleep(0)
        assert slots.enter_interactive("urgent") is victim
        slots.exit_interactive()  # the interactive request ended before the abort landed
        slots.release(victim, wake=False)
        # (bounded: were the slot given to the other request, this would wait for ever)
        await asyncio.wait_for(slots.acquire(Running("bulk-1-p1", 10), first=True), 5)
        admitted.append("bulk-1-p1")
        await asyncio.sleep(0)
        other.cancel()
        return admitted

    # Then the re-run takes the free slot, not the better-priority request waiting for it
    assert asyncio.run(scenario()) == ["bulk-1-p1"]
