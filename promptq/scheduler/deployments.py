"""Which deployment of a model gets the next call: a healthy one (circuit not open) that
would admit it soonest, given its limits, what it has left and the calls already waiting
for it here; idle deployments share by weight."""

from __future__ import annotations

import random

from promptq.catalog import Deployment, ModelEntry
from promptq.scheduler.admission import AdmissionGate
from promptq.scheduler.breaker import CircuitBreaker
from promptq.scheduler.rate_limit import DeploymentLimits, RateLimiter

__all__ = ["choose_deployment", "limits_of"]


def limits_of(deployment: Deployment) -> DeploymentLimits:
    """The shared-limit identity and declared limits of a deployment."""
    assert deployment.name is not None, "use ModelEntry.all_deployments()"
    return DeploymentLimits(
        key=deployment.name,
        rpm=deployment.rpm,
        tpm=deployment.tpm,
        max_concurrency=deployment.max_concurrency,
    )


def _seconds_to_admit(
    limiter: RateLimiter, limits: DeploymentLimits, state: dict[str, float], queued: int
) -> float:
    """A rough wait before one more call would be admitted on this deployment."""
    now = state["now"]
    wait = max(0.0, state.get("paused_until", 0.0) - now)
    rpm = limits.rpm or state.get("d_rpm")
    if rpm:
        rate = rpm * limiter.settings.margin / 60
        level = state.get("req")
        if level is not None:
            level = level + max(0.0, now - state.get("req_at", now)) * rate
        else:
            level = max(1.0, rpm / 60 * limiter.settings.burst_seconds)
        wait += max(0.0, queued + 1 - level) / rate
    conc = limits.max_concurrency or state.get("d_conc")
    if conc and state["in_flight"] + queued >= conc:
        wait += 0.1 * (state["in_flight"] + queued + 1 - conc)
    return wait


async def choose_deployment(
    entry: ModelEntry,
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    gate: AdmissionGate,
    rng: random.Random | None = None,
) -> Deployment | None:
    """The deployment for the next call, or None when every circuit is open."""
    deployments = entry.all_deployments()
    if len(deployments) == 1:
        return deployments[0]  # its breaker answers when the call asks to go through
    healthy = [d for d in deployments if not await breaker.is_open(str(d.name))]
    if len(healthy) <= 1:
        return healthy[0] if healthy else None
    chosen = await _least_wait(healthy, limiter, gate, rng)
    gate.expect(str(chosen.name))  # no await since the scores: the next caller sees it
    return chosen


async def _least_wait(
    healthy: list[Deployment],
    limiter: RateLimiter,
    gate: AdmissionGate,
    rng: random.Random | None,
) -> Deployment:
    states = [await limiter.state(limits_of(d)) for d in healthy]
    scored: list[tuple[float, float, Deployment]] = []
    for deployment, state in zip(healthy, states, strict=True):
        limits = limits_of(deployment)
        wait = _seconds_to_admit(limiter, limits, state, gate.waiting(limits.key))
        # Among equal waits (e.g. all idle), a weighted random draw spreads the load.
        tiebreak = (rng or random).random() ** (1 / deployment.weight)
        scored.append((wait, -tiebreak, deployment))
    return min(scored, key=lambda item: (item[0], item[1]))[2]
