"""Usage: what a key, budget or tenant spent in its budget's current period, by model,
summed from the jobs themselves (so it agrees with them by construction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.budgets import period_start
from promptq.models import Budget, BudgetPeriod, Job, JobStatus, utcnow

__all__ = ["ModelUsage", "Usage", "usage_of"]


@dataclass(frozen=True)
class ModelUsage:
    """One model's share of a period: finished requests, their tokens and cost, and the
    requests answered from the cache with what they saved."""

    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    cached_requests: int
    saved_usd: Decimal


@dataclass(frozen=True)
class Usage:
    """Spend against a budget in its current period."""

    spend_usd: Decimal
    budget_usd: Decimal | None
    budget_period: BudgetPeriod | None
    period_start: datetime | None
    by_model: list[ModelUsage]

    def as_json(self) -> dict[str, Any]:
        """The body of GET /v1/usage."""
        return {
            "object": "usage",
            "spend_usd": float(self.spend_usd),
            "budget_usd": None if self.budget_usd is None else float(self.budget_usd),
            "budget_period": None if self.budget_period is None else self.budget_period.value,
            "period_start": None
            if self.period_start is None
            else int(self.period_start.timestamp()),
            "by_model": [
                {
                    "model": m.model,
                    "requests": m.requests,
                    "prompt_tokens": m.prompt_tokens,
                    "completion_tokens": m.completion_tokens,
                    "cost_usd": float(m.cost_usd),
                    "cached_requests": m.cached_requests,
                    "saved_usd": float(m.saved_usd),
                }
                for m in self.by_model
            ],
        }


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


async def usage_of(
    session: AsyncSession, scope: sa.ColumnElement[bool], budget: Budget | None
) -> Usage:
    """The usage of the jobs matching `scope` (a key's, a budget's or a tenant's), in the
    current period of `budget` (all time without one). A job counts in the period it
    finished in."""
    start = None
    where = sa.and_(scope, Job.status == JobStatus.SUCCEEDED)
    if budget is not None:
        start = period_start(budget.period, utcnow())
        if budget.period is BudgetPeriod.TOTAL:
            start = budget.created_at
        else:
            where = sa.and_(where, Job.finished_at >= start)
    cached = sa.func.coalesce(Job.cached, sa.false())
    stmt = (
        sa.select(
            Job.model,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(Job.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(Job.completion_tokens), 0),
            sa.func.coalesce(sa.func.sum(Job.cost_usd), 0),
            sa.func.count().filter(cached),
            sa.func.coalesce(sa.func.sum(Job.saved_usd), 0),
        )
        .where(where)
        .group_by(Job.model)
        .order_by(Job.model)
    )
    rows = (await session.execute(stmt)).all()
    by_model = [
        ModelUsage(
            model=str(model),
            requests=int(n),
            prompt_tokens=int(p or 0),
            completion_tokens=int(c or 0),
            cost_usd=Decimal(cost or 0),
            cached_requests=int(hits),
            saved_usd=Decimal(saved or 0),
        )
        for model, n, p, c, cost, hits, saved in rows
    ]
    return Usage(
        spend_usd=sum((m.cost_usd for m in by_model), Decimal(0)),
        budget_usd=None if budget is None else budget.budget_usd,
        budget_period=None if budget is None else budget.period,
        period_start=start,
        by_model=by_model,
    )
