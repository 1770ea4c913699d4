"""Real processes for the tests: the same child-process and polling helpers the demo and
the benchmarks use (promptq.embedded)."""

from __future__ import annotations

from collections.abc import Callable

from promptq.embedded import Child, free_port, poll_until, redis_args, wait_http, wait_until

__all__ = ["Child", "free_port", "poll_until", "redis_args", "wait_for", "wait_http"]


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll `predicate` until true (promptq.embedded.wait_until, polling more often)."""
    wait_until(predicate, timeout, what, interval=interval)
