"""The provider's state: the config, the random source, per-prompt fault counts and stats."""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from promptq.sim_provider.config import SimConfig
from promptq.sim_provider.directives import Directives, parse_directives
from promptq.sim_provider.errors import SimError, simulated_error
from promptq.sim_provider.limits import RateLimits
from promptq.sim_provider.modes import Modes
from promptq.sim_provider.prompts import Prompt
from promptq.sim_provider.replies import Completion, generate

Handler = Callable[[Request], Awaitable[Response]]
#: The calls log keeps this many of the latest calls.
CALLS_KEPT = 50_000
_TAG_CHARS = 80


class Simulator:
    """The provider's state: the config, the random source, per-prompt fault counts, stats."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        # Re-seeding makes the random failures after a reset repeat those of a fresh server.
        self._rng = random.Random(self.config.seed)
        config = self.config
        self.limits = RateLimits.build(config.rpm, config.tpm, config.burst_seconds)
        self.modes = Modes(fail_status=config.fail_status, slow_ms=config.slow_ms)
        if config.down_for:
            self.modes.go_down(config.down_for, config.down_status)
        self._tokens = 0
        # When the first and the last completion were served: the rate a client achieved.
        self._first_ok: float | None = None
        self._last_ok: float | None = None
        self._attempts: dict[bytes, int] = {}
        self._total = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        # Per call, logged as it arrives: when (monotonic), its status once answered (0
        # until then), the start of its prompt's last text.
        self._calls: deque[list[Any]] = deque(maxlen=CALLS_KEPT)

    def calls(self) -> list[tuple[float, int, str]]:
        """The calls in order of arrival, those still running included: (seconds since the
        first arrived, status or 0, the first characters of the prompt's last text), for
        tests that check who went first and how 429s spread over time."""
        start = self._calls[0][0] if self._calls else 0.0
        return [(round(at - start, 4), status, tag) for at, status, tag in self._calls]

    def stats(self) -> dict[str, Any]:
        return {
            "total": self._total,
            "by_endpoint": dict(self._by_endpoint),
            "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
            "tokens": self._tokens,
            "served_window_s": round(self._last_ok - self._first_ok, 4)
            if self._first_ok is not None and self._last_ok is not None
            else None,
            "limits": {
                "rpm": self.limits.requests.per_minute if self.limits.requests else None,
                "tpm": self.limits.tokens.per_minute if self.limits.tokens else None,
            },
            "modes": self.modes.describe(),
        }

    def configure(self, changes: dict[str, Any]) -> None:
        """Change limits or outage modes at run time (the ``/_sim/config`` admin route)."""
        if "rpm" in changes or "tpm" in changes:
            rpm = changes.get(
                "rpm", self.limits.requests.per_minute if self.limits.requests else None
            )
            tpm = changes.get("tpm", self.limits.tokens.per_minute if self.limits.tokens else None)
            burst = float(changes.get("burst_seconds") or self.config.burst_seconds)
            self.limits = RateLimits.build(rpm, tpm, burst)
        self.modes.update(changes)

    def counted(self, path: str, method: str, handler: Handler) -> Route:
        """Route `path` to `handler`, counting each request and its response status."""

        async def endpoint(request: Request) -> Response:
            call = [time.monotonic(), 0, ""]
            if method == "POST":
                self._calls.append(call)
            response = await handler(request)
            response.headers.update(self.limits.headers())
            if method == "POST":
                prompt: Prompt | None = getattr(request.state, "prompt", None)
                call[1] = response.status_code
                call[2] = prompt.texts[-1][:_TAG_CHARS] if prompt and prompt.texts else ""
            if response.status_code == 200 and method == "POST":
                now = time.monotonic()
                self._first_ok = self._first_ok if self._first_ok is not None else now
                self._last_ok = now
            self._total += 1
            self._by_endpoint[path] += 1
            self._by_status[response.status_code] += 1
            return response

        return Route(path, endpoint, methods=[method])

    def authorized(self, supplied: str | None) -> bool:
        expected = self.config.api_key
        if expected is None:
            return True
        return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())

    async def complete(self, prompt: Prompt) -> Completion:
        """Apply the directives, faults and latency to a prompt, then generate its reply."""
        directives = parse_directives(prompt.texts)
        outage = self.modes.fault()
        if outage is not None:
            raise outage
        wanted = self.config.output_tokens if directives.tokens is None else directives.tokens
        # Charged like OpenAI does: the prompt plus the most the reply may use.
        charge = prompt.prompt_tokens + (prompt.max_tokens or wanted)
        self.limits.admit(charge)
        self._tokens += charge
        error = self._fault(prompt.key, directives)
        delay = (self.config.latency_ms + self.modes.slow_ms) / 1000 + directives.sleep
        if delay > 0:  # no sleep at all at zero latency: the benchmark path stays cheap
            await asyncio.sleep(delay)
        if error is not None:
            raise error
        return generate(prompt, wanted)

    def _fault(self, key: bytes, directives: Directives) -> SimError | None:
        retry_after = directives.retry_after
        if retry_after is None:
            retry_after = self.config.retry_after
        if directives.status is not None:
            return simulated_error(directives.status, retry_after)
        if directives.fail is None:
            return self._random_fault(retry_after)
        # A scripted prompt skips the random failures, so a test stays exact on a noisy server.
        status, times = directives.fail
        seen = self._attempts.get(key, 0)
        self._attempts[key] = seen + 1
        if seen < times:
            return simulated_error(status, retry_after, f" (attempt {seen + 1} of {times})")
        return None

    def _random_fault(self, retry_after: float) -> SimError | None:
        rate_429, rate_500 = self.config.fail_429_rate, self.config.fail_500_rate
        if rate_429 == 0 and rate_500 == 0:
            return None
        draw = self._rng.random()
        if draw < rate_429:
            return simulated_error(429, retry_after)
        if draw < rate_429 + rate_500:
            return simulated_error(500, retry_after)
        return None
