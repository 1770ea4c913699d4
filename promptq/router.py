"""Cost-aware routing: a `[[routers]]` name that clients send as `model` is resolved per
request to the cheapest candidate that can take it, with the others that fit as the
escalation chain (tried in turn when an answer is cut off or fails, as `escalate_on` says).

A candidate fits when its context window (`max_model_len`, if set) holds the counted prompt
plus the request's max tokens, when its `capabilities` include the request's
`metadata.task` (if the request names one), and when it is healthy with capacity (the
caller says so: `promptq.scheduler.health` on remote workers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from promptq.catalog import Catalog, ModelEntry, RouterEntry
from promptq.errors import InvalidRequest
from promptq.tokens import count_prompt_tokens

__all__ = ["NoRoute", "Route", "plan_route"]


class NoRoute(InvalidRequest):
    """No candidate of the router can take the request: a 400 `no_model_fits`."""

    def __init__(self, router: str, why: str) -> None:
        super().__init__("no_model_fits", f"No model of router {router!r} can take this: {why}.")


def _wanted_completion(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


class Route:
    """The models a routed request may run on, in the order to try them."""

    def __init__(self, router: RouterEntry, chain: list[ModelEntry]) -> None:
        self.router = router
        self.chain = chain

    @property
    def first(self) -> ModelEntry:
        return self.chain[0]

    def escalates(self, reason: str) -> bool:
        """Whether an answer ending for `reason` ("length" or "error") moves on."""
        return reason in self.router.escalate_on


def _fits(entry: ModelEntry, body: Mapping[str, Any], default: int) -> bool:
    if entry.max_model_len is None:
        return True
    return (
        count_prompt_tokens(entry, body) + _wanted_completion(body, default) <= entry.max_model_len
    )


def plan_route(
    catalog: Catalog,
    router: RouterEntry,
    body: Mapping[str, Any],
    task: str | None,
    default_completion: int,
    healthy: Callable[[ModelEntry], bool] = lambda _: True,
) -> Route:
    """The candidates that fit the request, cheapest for it first; NoRoute if none does."""
    candidates = [catalog[name] for name in router.candidates]
    if task:
        candidates = [e for e in candidates if task in e.capabilities]
        if not candidates:
            raise NoRoute(router.name, f"none has the capability {task!r}")
    fitting = [e for e in candidates if _fits(e, body, default_completion)]
    if not fitting:
        raise NoRoute(router.name, "the prompt and max tokens fit no model's context window")

    def price(entry: ModelEntry) -> Any:
        prompt = count_prompt_tokens(entry, body)
        return entry.cost(prompt, _wanted_completion(body, default_completion))

    # Stable: between equal prices the models file's order (cheapest first) decides.
    by_price = sorted(fitting, key=price)
    # The cheapest healthy candidate serves first; the cheaper unhealthy ones are skipped,
    # the pricier ones stay in the escalation chain (they wait if they must). None healthy:
    # the cheapest, whose calls wait like any job's.
    first = next((i for i, entry in enumerate(by_price) if healthy(entry)), 0)
    return Route(router, by_price[first:])
