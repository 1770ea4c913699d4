"""Deadlines in the GPU engine wrapper (promptq.workers.vllm_engine) over an in-memory
engine: a request still waiting for a running slot when its deadline passes ends with the
deadline's code and never runs; one already generating finishes."""

from __future__ import annotations

import asyncio
import time

import pytest

from promptq.errors import DeadlineExceeded
from promptq.jobs import Deadline, JobErrorCode
from promptq.queues import BULK_BAND
from promptq.workers.completion import Completion, JobRequest
from tests.fake_engine import FakeAsyncLLM, fake_vllm_engine

BODY = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


def _request(job_id: str, step: int, deadline: Deadline | None = None) -> JobRequest:
    return JobRequest(job_id, 1, "fake", "fake", BODY, step, deadline=deadline)


def _in(seconds: float, code: str = JobErrorCode.DEADLINE_EXCEEDED) -> Deadline:
    return Deadline(time.time() + seconds, code)


def test_a_bulk_line_waiting_for_a_slot_past_its_batch_window_ends_batch_expired() -> None:
    async def scenario() -> tuple[DeadlineExceeded, float, FakeAsyncLLM, list[Completion]]:
        # Given an engine whose two running slots hold bulk requests that go on generating
        fake = FakeAsyncLLM(max_num_seqs=2)
        engine = fake_vllm_engine(fake)
        running = [
            asyncio.create_task(engine.complete(_request(f"bulk-{n}", BULK_BAND))) for n in (1, 2)
        ]
        await fake.generating("bulk-1-1", "bulk-2-1")
        # When a third bulk line, whose batch's window ends in 0.3 s, waits for a slot
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as raised:
            await engine.complete(_request("late", BULK_BAND, _in(0.3, "batch_expired")))
        waited = time.monotonic() - started
        # And the running requests then finish, and a new one still gets a slot
        fake.gate.set()
        finished = list(await asyncio.gather(*running))
        finished.append(await engine.complete(_request("after", BULK_BAND)))
        return raised.value, waited, fake, finished

    error, waited, fake, finished = asyncio.run(scenario())
    # Then it ended with the batch's code when its window ended, never reaching the engine
    assert error.code == "batch_expired" and "engine_slot" in error.message
    assert 0.25 <= waited < 5
    assert "late-1" not in fake.submitted
    # And the slots it waited for were not lost
    assert [c.finish_reason for c in finished] == ["stop"] * 3


def test_an_interactive_job_waiting_in_the_engine_queue_is_aborted_at_its_deadline() -> None:
    async def scenario() -> tuple[DeadlineExceeded, FakeAsyncLLM, list[Completion]]:
        # Given an engine (no preemption) whose two sequences are generating
        fake = FakeAsyncLLM(max_num_seqs=2)
        engine = fake_vllm_engine(fake, preempt=False)
        running = [asyncio.create_task(engine.complete(_request(f"busy-{n}", 0))) for n in (1, 2)]
        await fake.generating("busy-1-1", "busy-2-1")
        # When an interactive job with a deadline 0.3 s away waits in the engine's queue
        with pytest.raises(DeadlineExceeded) as raised:
            await engine.complete(_request("late", 0, _in(0.3)))
        fake.gate.set()
        return raised.value, fake, list(await asyncio.gather(*running))

    error, fake, finished = asyncio.run(scenario())
    # Then it ends deadline_exceeded: submitted, aborted, and never generated a token
    assert error.code == "deadline_exceeded"
    assert "late-1" in fake.submitted and "late-1" in fake.aborted
    assert "late-1" not in fake.generated
    assert [c.finish_reason for c in finished] == ["stop", "stop"]


def test_a_request_generating_when_its_deadline_passes_finishes() -> None:
    async def scenario() -> Completion:
        # Given a job with a deadline 0.2 s away that starts generating at once
        fake = FakeAsyncLLM(max_num_seqs=2, tokens=3)
        engine = fake_vllm_engine(fake)
        task = asyncio.create_task(engine.complete(_request("job", 0, _in(0.2))))
        await fake.generating("job-1")
        # When its deadline passes while it generates
        await asyncio.sleep(0.4)
        fake.gate.set()
        return await task

    # Then it finishes with its whole answer, like a call a remote worker already sent
    completion = asyncio.run(scenario())
    assert (completion.finish_reason, completion.completion_tokens) == ("stop", 3)


def test_a_job_past_its_deadline_is_not_sent_to_the_engine() -> None:
    async def scenario() -> tuple[str, FakeAsyncLLM]:
        fake = FakeAsyncLLM()
        engine = fake_vllm_engine(fake)
        with pytest.raises(DeadlineExceeded) as raised:
            await engine.complete(_request("gone", 0, _in(-1)))
        return raised.value.code, fake

    code, fake = asyncio.run(scenario())
    assert code == "deadline_exceeded" and fake.submitted == []
