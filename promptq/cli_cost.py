"""`promptq keys budget` and `promptq estimate`: budgets of keys and tenants, and what a
batch file may cost before it is submitted (registered by promptq.cli)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.config import get_settings
from promptq.db import Database
from promptq.models import ApiKey, BudgetPeriod

__all__ = ["BudgetOpt", "PeriodOpt", "apply_budget", "register_cost_commands"]

BudgetOpt = Annotated[
    str | None, typer.Option("--budget-usd", help="Most the key may spend per period, in USD.")
]
PeriodOpt = Annotated[
    BudgetPeriod | None,
    typer.Option(
        "--budget-period", help="When spend starts again (UTC); a new budget's default: month."
    ),
]


def _money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not an amount of USD") from None
    if not value.is_finite() or value < 0:
        raise typer.BadParameter("the budget must be a non-negative amount of USD")
    return value


async def _find_key(session: AsyncSession, name_or_id: str) -> ApiKey:
    keys = list(
        (
            await session.execute(
                sa.select(ApiKey).where(
                    sa.or_(ApiKey.id == name_or_id, ApiKey.name == name_or_id),
                    ApiKey.revoked_at.is_(None),
                )
            )
        ).scalars()
    )
    if len(keys) != 1:
        found = "no live key" if not keys else f"{len(keys)} live keys"
        raise typer.BadParameter(f"{found} named {name_or_id!r}; give the key's id")
    return keys[0]


async def apply_budget(
    session: AsyncSession,
    *,
    tenant: str,
    api_key_id: str | None,
    budget_usd: str | None,
    period: BudgetPeriod | None,
    lift: bool = False,
) -> dict[str, object]:
    """Set, change or lift a budget; what was done, as printed by the CLI."""
    from promptq.budgets import lift_budget, set_budget

    scope = {"tenant": tenant, "api_key_id": api_key_id}
    if lift:
        lifted = await lift_budget(session, tenant=tenant, api_key_id=api_key_id)
        return {**scope, "budget_usd": None, "lifted": lifted}
    if budget_usd is None:
        raise typer.BadParameter("give --budget-usd AMOUNT, or --lift")
    budget = await set_budget(
        session, tenant=tenant, api_key_id=api_key_id, budget_usd=_money(budget_usd), period=period
    )
    return {
        **scope,
        "budget_id": budget.id,
        "budget_usd": str(budget.budget_usd),
        "budget_period": budget.period.value,
        "period_start": budget.period_start.isoformat(),
    }


def keys_budget(
    key: Annotated[str | None, typer.Argument(help="The key's name or id.")] = None,
    budget_usd: BudgetOpt = None,
    budget_period: PeriodOpt = None,
    lift: Annotated[bool, typer.Option(help="Remove the limit (spend is still counted).")] = False,
    tenant: Annotated[
        str | None, typer.Option(help="Set the default budget of this tenant's keys instead.")
    ] = None,
) -> None:
    """Set, change or lift the budget of a key (or the default budget of a tenant)."""
    if (key is None) == (tenant is None):
        raise typer.BadParameter("name one key, or --tenant TENANT for the default budget")

    async def _go() -> dict[str, object]:
        db = Database.from_settings(get_settings(), pool_size=1)
        try:
            async with db.session() as session:
                scope_tenant, key_id = tenant or "", None
                if key is not None:
                    found = await _find_key(session, key)
                    scope_tenant, key_id = found.tenant, found.id
                return await apply_budget(
                    session,
                    tenant=scope_tenant,
                    api_key_id=key_id,
                    budget_usd=budget_usd,
                    period=budget_period,
                    lift=lift,
                )
        finally:
            await db.dispose()

    typer.echo(json.dumps(asyncio.run(_go()), indent=2))


def estimate(
    file: Path,
    model: Annotated[str | None, typer.Option(help="Count every line as this model.")] = None,
) -> None:
    """Print the prompt tokens, most completion tokens and most cost per model of a JSONL
    batch file, without submitting it (prices from the models file)."""
    from promptq.catalog import load_catalog
    from promptq.estimate import estimate_file

    settings = get_settings()
    catalog = load_catalog(settings.models_file)
    result = estimate_file(file, catalog, settings.default_completion_tokens, model=model)
    header = (
        f"{'model':<28} {'lines':>8} {'prompt_tokens':>14} {'max_out_tokens':>15} {'max_usd':>14}"
    )
    typer.echo(header)
    for row in result.by_model.values():
        typer.echo(
            f"{row.model:<28} {row.requests:>8} {row.prompt_tokens:>14} "
            f"{row.max_completion_tokens:>15} {row.max_cost_usd:>14.6f}"
        )
    typer.echo(
        f"{'total':<28} {sum(r.requests for r in result.by_model.values()):>8} "
        f"{'':>14} {'':>15} {result.max_cost_usd:>14.6f}"
    )
    if result.invalid_lines:
        typer.echo(f"{result.invalid_lines} line(s) cannot run (invalid, or unknown model)")


def register_cost_commands(app: typer.Typer, keys_app: typer.Typer) -> None:
    """Add `keys budget` and `estimate` to the promptq command."""
    keys_app.command("budget")(keys_budget)
    app.command("estimate")(estimate)
