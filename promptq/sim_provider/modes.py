"""Outage modes the simulated provider can be put in, at start or at run time."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from promptq.sim_provider.errors import SimError, simulated_error

__all__ = ["Modes"]


@dataclass
class Modes:
    """Down for a while, always failing, or slow; `clock` is monotonic seconds."""

    down_until: float = 0.0
    down_status: int = 503
    fail_status: int | None = None
    slow_ms: float = 0.0
    clock: Callable[[], float] = time.monotonic

    def go_down(self, seconds: float, status: int = 503) -> None:
        self.down_until = self.clock() + seconds
        self.down_status = status

    def fault(self) -> SimError | None:
        """The error every request gets in the current mode, if any."""
        if self.fail_status is not None:
            return simulated_error(self.fail_status, 0.0, " (always failing)")
        left = self.down_until - self.clock()
        if left > 0:
            return simulated_error(self.down_status, 0.0, f" (down for {left:.1f} s more)")
        return None

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply an admin request: down_for/down_status, fail_status, slow_ms (null clears)."""
        if "down_for" in changes:
            seconds = float(changes["down_for"] or 0)
            self.go_down(seconds, int(changes.get("down_status") or 503))
        if "fail_status" in changes:
            value = changes["fail_status"]
            self.fail_status = int(value) if value is not None else None
        if "slow_ms" in changes:
            self.slow_ms = float(changes["slow_ms"] or 0)

    def describe(self) -> dict[str, Any]:
        return {
            "down_for": round(max(0.0, self.down_until - self.clock()), 3),
            "down_status": self.down_status,
            "fail_status": self.fail_status,
            "slow_ms": self.slow_ms,
        }
