"""What the API checks about money before it stores work: the model (or router) a request
names, whether the key's budget can pay for it (402 `budget_exceeded`), and a batch's
estimate against the client's `max_cost_usd` (402 `estimate_too_high`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from promptq.budgets import budget_for_key, check_affordable, max_cost
from promptq.catalog import Catalog, ModelEntry
from promptq.config import Settings
from promptq.errors import ApiError
from promptq.estimate import Estimate, estimate_stored
from promptq.models import ApiKey, Budget
from promptq.router import plan_route

__all__ = ["Admitted", "admit_batch", "admit_job", "serving_entry"]


def serving_entry(
    catalog: Catalog, model: str, body: Mapping[str, Any], task: str | None, settings: Settings
) -> tuple[ModelEntry, list[ModelEntry]]:
    """The model that will first serve a request naming `model`, and every model it may
    run on (a router's escalation chain); 400 if there is none."""
    router = catalog.routers.get(model)
    if router is None:
        entry = catalog.require(model)
        return entry, [entry]
    route = plan_route(catalog, router, body, task, settings.default_completion_tokens)
    chain = route.chain if router.escalate_on else route.chain[:1]
    return route.first, chain


@dataclass(frozen=True)
class Admitted:
    """The budget the work spends from (None: no budget), and a batch's estimate."""

    budget: Budget | None
    estimate: Estimate | None = None

    @property
    def budget_id(self) -> str | None:
        return None if self.budget is None else self.budget.id


async def admit_job(
    session: AsyncSession,
    key: ApiKey,
    chain: list[ModelEntry],
    body: Mapping[str, Any],
    settings: Settings,
) -> Admitted:
    """402 unless the key's budget has room for the most this request can cost."""
    budget = await budget_for_key(session, key)
    amount = sum((max_cost(e, body, settings.default_completion_tokens) for e in chain), Decimal(0))
    check_affordable(budget, amount)
    return Admitted(budget)


async def admit_batch(
    session: AsyncSession,
    key: ApiKey,
    file_id: str,
    catalog: Catalog,
    settings: Settings,
    max_cost_usd: float | None,
) -> Admitted:
    """Estimate the file; 402 if it is over `max_cost_usd`, or if the key's budget cannot
    pay for even its cheapest line."""
    estimate = await estimate_stored(session, file_id, catalog, settings.default_completion_tokens)
    if max_cost_usd is not None and estimate.max_cost_usd > Decimal(str(max_cost_usd)):
        raise ApiError(
            "estimate_too_high",
            f"The batch may cost up to {estimate.max_cost_usd:.6f} USD, more than "
            f"max_cost_usd {max_cost_usd}.",
            402,
        )
    budget = await budget_for_key(session, key)
    if estimate.cheapest_line_usd is not None:
        check_affordable(budget, estimate.cheapest_line_usd)
    return Admitted(budget, estimate)
