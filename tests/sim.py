"""Simulated providers as real HTTP servers in child processes, for traffic tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from tests.procs import Child, free_port, wait_http

__all__ = ["Call", "SimServer", "calls_between", "late_share"]

#: One call as the provider logged it: seconds since the first call, status, prompt start.
Call = tuple[float, int, str]


class SimServer:
    """``python -m promptq.sim_provider`` on a free port, with its flags."""

    def __init__(self, log_dir: Path, *flags: str, name: str = "sim") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "promptq.sim_provider", "--port", str(self.port), *flags]
        self.proc = Child(f"{name}-{self.port}", args, {}, log_dir)
        wait_http(f"{self.url}/_sim/stats")

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_sim/stats", timeout=5).json()
        return data

    def configure(self, **changes: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/_sim/config", json=changes, timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def calls(self, status: int | None = None) -> int:
        by_status = self.stats()["by_status"]
        if status is None:
            return sum(by_status.values())
        return int(by_status.get(str(status), 0))

    def calls_log(self) -> list[Call]:
        """Every call in order of arrival (see promptq.sim_provider.simulator)."""
        calls = httpx.get(f"{self.url}/_sim/calls", timeout=30).json()["calls"]
        return [(float(at), int(status), str(tag)) for at, status, tag in calls]

    def stop(self) -> None:
        self.proc.stop()


def late_share(calls: list[Call], status: int, after: float) -> tuple[int, int]:
    """(calls answered `status`, all calls) among those that arrived `after` seconds or
    more after the first."""
    late = [c for c in calls if c[0] >= after]
    return sum(1 for c in late if c[1] == status), len(late)


def calls_between(calls: list[Call], since: int, tag: str) -> int:
    """How many calls reached the provider after its first `since` calls and before the
    first whose prompt starts with `tag`."""
    first = next(i for i, c in enumerate(calls) if c[2].startswith(tag))
    return first - since
