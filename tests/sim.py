"""Simulated providers as real HTTP servers in child processes, for traffic tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from tests.procs import Child, free_port, wait_http

__all__ = ["SimServer"]


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

    def stop(self) -> None:
        self.proc.stop()
