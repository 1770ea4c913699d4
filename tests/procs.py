"""Real processes for the tests: the same child-process helpers the demo uses."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from promptq.embedded import Child, free_port, redis_binary, wait_until

__all__ = ["Child", "free_port", "redis_binary", "wait_for", "wait_http"]


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    wait_until(predicate, timeout, what, interval=interval)


def wait_http(url: str, timeout: float = 30.0) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(up, timeout, url)
