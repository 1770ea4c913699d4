"""What the API checks about money before it stores work: the model (or router) a request
names, and whether the key's budget can pay for it (402 `budget_exceeded`; for a batch,
whether anything is left: its estimate is checked after the request answered)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from promptq.budgets import budget_for_key, check_affordable, max_cost
from promptq.catalog import Catalog, ModelEntry
from promptq.config import Settings
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


#: The least a line can cost that is not free (Money's scale): a budget with less left is
#: exhausted.
_LEAST = Decimal("1e-10")


@dataclass(frozen=True)
class Admitted:
    """The budget the work spends from (None: no budget)."""

    budget: Budget | None

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


async def admit_batch(session: AsyncSession, key: ApiKey) -> Admitted:
    """402 if the key's budget has nothing left. A batch's estimate is checked against its
    `max_cost_usd` and the budget once its lines are read (promptq.scheduler.validation):
    the request answers before that."""
    budget = await budget_for_key(session, key)
    check_affordable(budget, _LEAST)
    return Admitted(budget)
