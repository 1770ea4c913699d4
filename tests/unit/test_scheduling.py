"""Retry delays, priority steps and completion windows."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from promptq.batches import parse_window
from promptq.constants import REMOTE_INTERACTIVE_QUEUE, REMOTE_QUEUE, gpu_queue
from promptq.errors import InvalidRequest, RateLimited, RetryableError
from promptq.queues import delivery_queue, queue_step
from promptq.retry import backoff_delay, parse_retry_after


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(1)
    error = RetryableError("provider_unavailable", "500")
    delays = [backoff_delay(n, error, base=1.0, cap=8.0, rng=rng) for n in range(1, 7)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(8.0, 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling


def test_retry_after_is_honoured() -> None:
    delay = backoff_delay(1, RateLimited("slow down", retry_after=3.0), base=0.1, cap=60)
    assert 3.0 <= delay <= 3.3


@pytest.mark.parametrize(
    ("header", "seconds"), [("2", 2.0), ("0.5", 0.5), (None, None), ("soon", None), ("-4", 0.0)]
)
def test_retry_after_header_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_interactive_jobs_always_come_before_batch_lines() -> None:
    interactive = [queue_step(p, interactive=True) for p in range(10)]
    bulk = [queue_step(p, interactive=False) for p in range(10)]
    assert max(interactive) < min(bulk)
    assert interactive == sorted(interactive) and bulk == sorted(bulk)
    assert queue_step(0, interactive=False) < queue_step(9, interactive=False)


@pytest.mark.parametrize(
    ("window", "expected"),
    [("24h", timedelta(hours=24)), ("30m", timedelta(minutes=30)), ("2d", timedelta(days=2))],
)
def test_completion_windows(window: str, expected: timedelta) -> None:
    assert parse_window(window) == expected


@pytest.mark.parametrize("window", ["", "24", "0h", "1w", "99d"])
def test_bad_completion_windows_are_refused(window: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_window(window)


def test_interactive_chunks_travel_on_their_workers_interactive_queue() -> None:
    interactive = queue_step(0, interactive=True)
    bulk = queue_step(0, interactive=False)
    assert delivery_queue(REMOTE_QUEUE, interactive) == REMOTE_INTERACTIVE_QUEUE
    assert delivery_queue(REMOTE_QUEUE, bulk) == REMOTE_QUEUE
    gpu = gpu_queue("llama")
    assert delivery_queue(gpu, interactive) == "promptq.gpu-interactive.llama"
    assert delivery_queue(gpu, bulk) == gpu
    # no model name makes a GPU queue another model's interactive queue
    assert delivery_queue(gpu_queue("llama.interactive"), bulk) != delivery_queue(gpu, interactive)
