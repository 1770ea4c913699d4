"""GET /v1/usage: spend against the budget in its current period, by model."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query

from promptq.api.deps import CurrentKey, SessionDep
from promptq.budgets import budget_for_key
from promptq.errors import ApiError, NotFound
from promptq.models import ApiKey, Budget, Job
from promptq.usage import usage_of

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", operation_id="get_usage")
async def get_usage(
    key: CurrentKey,
    session: SessionDep,
    api_key_id: Annotated[str | None, Query(max_length=40)] = None,
    tenant: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The calling key's spend in its budget's current period (all time without a budget),
    by model, with cached requests and what they saved. An admin key may ask for any key
    (`api_key_id`) or tenant (`tenant`, against the tenant's default budget)."""
    if (api_key_id or tenant) and not key.is_admin:
        raise ApiError("forbidden", "Only an admin key may ask for another key or tenant.", 403)
    if tenant:
        budget = (
            await session.execute(
                sa.select(Budget).where(Budget.tenant == tenant, Budget.api_key_id.is_(None))
            )
        ).scalar_one_or_none()
        return (await usage_of(session, Job.tenant == tenant, budget)).as_json()
    subject = key
    if api_key_id:
        found = await session.get(ApiKey, api_key_id)
        if found is None:
            raise NotFound("API key", api_key_id)
        subject = found
    budget = await budget_for_key(session, subject)
    # A key's own budget covers its own jobs; a tenant default covers every key using it.
    scope = Job.budget_id == budget.id if budget is not None else Job.api_key_id == subject.id
    if budget is not None and budget.api_key_id == subject.id:
        scope = Job.api_key_id == subject.id
    return (await usage_of(session, scope, budget)).as_json()
