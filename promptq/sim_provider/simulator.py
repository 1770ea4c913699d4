"""The provider's state: the config, the random source, per-prompt fault counts and stats."""

from __future__ import annotations

import asyncio
import hmac
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from promptq.sim_provider.config import SimConfig
from promptq.sim_provider.directives import Directives, parse_directives
from promptq.sim_provider.errors import SimError, simulated_error
from promptq.sim_provider.prompts import Prompt
from promptq.sim_provider.replies import Completion, generate

Handler = Callable[[Request], Awaitable[Response]]


class Simulator:
    """The provider's state: the config, the random source, per-prompt fault counts, stats."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        # Re-seeding makes the random failures after a reset repeat those of a fresh server.
        self._rng = random.Random(self.config.seed)
        self._attempts: dict[bytes, int] = {}
        self._total = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "total": self._total,
            "by_endpoint": dict(self._by_endpoint),
            "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
        }

    def counted(self, path: str, method: str, handler: Handler) -> Route:
        """Route `path` to `handler`, counting each request and its response status."""

        async def endpoint(request: Request) -> Response:
            response = await handler(request)
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
        error = self._fault(prompt.key, directives)
        delay = self.config.latency_ms / 1000 + directives.sleep
        if delay > 0:  # no sleep at all at zero latency: the benchmark path stays cheap
            await asyncio.sleep(delay)
        if error is not None:
            raise error
        wanted = self.config.output_tokens if directives.tokens is None else directives.tokens
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
