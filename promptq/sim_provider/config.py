"""How the simulated provider behaves when a prompt asks for nothing special."""

from __future__ import annotations

from dataclasses import dataclass

SIM_MODELS = ("promptq-sim",)  # what GET /v1/models lists; requests may name any model


@dataclass(frozen=True)
class SimConfig:
    """How the simulated provider behaves for every request; prompt directives override it."""

    latency_ms: float = 0.0
    output_tokens: int = 16
    fail_429_rate: float = 0.0
    fail_500_rate: float = 0.0
    retry_after: float = 1.0
    api_key: str | None = None
    seed: int = 0
    # Enforced limits (None: unlimited), paced per second with `burst_seconds` of burst.
    rpm: int | None = None
    tpm: int | None = None
    burst_seconds: float = 1.0
    # Outages: down (answering `down_status`) for the first `down_for` seconds, every
    # request failing with `fail_status`, or `slow_ms` added to every answer.
    down_for: float = 0.0
    down_status: int = 503
    fail_status: int | None = None
    slow_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.retry_after < 0 or self.output_tokens < 0:
            raise ValueError("latency_ms, retry_after and output_tokens must not be negative")
        if (self.rpm is not None and self.rpm < 1) or (self.tpm is not None and self.tpm < 1):
            raise ValueError("rpm and tpm must be positive")
        if self.burst_seconds <= 0 or self.down_for < 0 or self.slow_ms < 0:
            raise ValueError("burst_seconds must be positive; down_for, slow_ms not negative")
        rates = (self.fail_429_rate, self.fail_500_rate)
        if not all(0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0:
            raise ValueError("failure rates must lie in [0, 1] and add up to at most 1")
