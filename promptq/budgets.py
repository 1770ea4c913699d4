"""Budgets: a key (or, by default, its tenant) may spend at most so much per UTC day, week,
month or in total. Before a job runs it reserves its maximum cost with one guarded UPDATE
(`spent + reserved + x <= budget`), so however many jobs are in flight across workers the
budget cannot be passed; once the job is terminal its reservation is settled: the real
cost moves to `spent`, the rest is given back.

A reservation (a row of `reservations`) belongs to the job, not to an attempt: a retried or
re-delivered job keeps it, and whatever ends the job (a worker, a cancel, the sweeper)
leaves it to `settle`, which finds the reservations of jobs that ended."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.catalog import ModelEntry
from promptq.errors import InvalidRequest
from promptq.ids import new_id
from promptq.models import (
    TERMINAL_JOB_STATUSES,
    ApiKey,
    Budget,
    BudgetPeriod,
    Job,
    JobStatus,
    utcnow,
)
from promptq.models import Reservation as ReservationRow
from promptq.tokens import count_prompt_tokens, max_completion_tokens

__all__ = [
    "Ask",
    "BudgetExceeded",
    "HeldJob",
    "Reservation",
    "budget_for_key",
    "check_affordable",
    "lift_budget",
    "max_cost",
    "period_start",
    "reserve",
    "reserve_many",
    "set_budget",
    "settle",
    "settle_ended",
    "spent_now",
]

_ZERO = Decimal(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BudgetExceeded(InvalidRequest):
    """The key's budget cannot pay for this request: a 402 `budget_exceeded`."""

    def __init__(self, message: str) -> None:
        super().__init__("budget_exceeded", message, 402)


class Reservation(StrEnum):
    """What `reserve` did."""

    #: The amount is now held for the job.
    RESERVED = "reserved"
    #: Only other jobs' reservations stand in the way: try again once they settle.
    WAIT = "wait"
    #: The budget's spend alone leaves no room: the job cannot run in this period.
    EXHAUSTED = "exhausted"
    #: The job's lease was lost meanwhile; nothing was reserved.
    LOST = "lost"


def period_start(period: BudgetPeriod, now: datetime) -> datetime:
    """The start of the period that holds `now`, on UTC calendar boundaries (weeks start on
    Monday); a total budget has one period, starting at the epoch."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is BudgetPeriod.DAY:
        return day
    if period is BudgetPeriod.WEEK:
        return day.fromordinal(day.toordinal() - day.weekday()).replace(tzinfo=UTC)
    if period is BudgetPeriod.MONTH:
        return day.replace(day=1)
    return _EPOCH


def max_cost(entry: ModelEntry, body: Mapping[str, Any], default_completion: int) -> Decimal:
    """The most a request can cost on `entry`: its counted prompt tokens and its max tokens
    (`default_completion` if it names none) at the model's prices; zero for a model priced
    at zero."""
    if not entry.input_per_mtok and not entry.output_per_mtok:
        return _ZERO
    prompt = count_prompt_tokens(entry, body)
    completion = max_completion_tokens(entry, body, default_completion)
    return entry.cost(prompt, completion)


_BUDGETS: sa.Table = Budget.__table__  # type: ignore[assignment]
_JOBS: sa.Table = Job.__table__  # type: ignore[assignment]
_RESERVATIONS: sa.Table = ReservationRow.__table__  # type: ignore[assignment]
_ID_ARRAY = postgresql.ARRAY(sa.String())


def _current_start(now: datetime) -> sa.ColumnElement[datetime]:
    # The budget row's current period start, computed in SQL from its own `period` so one
    # statement serves every period (portable: no date_trunc).
    b = _BUDGETS.c
    starts = {p: period_start(p, now) for p in (BudgetPeriod.DAY, BudgetPeriod.WEEK)}
    starts[BudgetPeriod.MONTH] = period_start(BudgetPeriod.MONTH, now)
    return sa.case(
        *[
            (b.period == p.value, sa.literal(start, type_=b.period_start.type))
            for p, start in starts.items()
        ],
        else_=b.period_start,
    )


def _spent_in_period(now: datetime) -> sa.ColumnElement[Decimal]:
    b = _BUDGETS.c
    return sa.case((b.period_start < _current_start(now), sa.literal(_ZERO)), else_=b.spent_usd)


def spent_now(budget: Budget, now: datetime | None = None) -> Decimal:
    """What the budget has spent in the current period (a past period's spend is over)."""
    start = period_start(budget.period, now or utcnow())
    if budget.period is not BudgetPeriod.TOTAL and budget.period_start < start:
        return _ZERO
    return Decimal(budget.spent_usd)


# -- administration ---------------------------------------------------------------------
async def _find(session: AsyncSession, tenant: str, api_key_id: str | None) -> Budget | None:
    stmt = sa.select(Budget).where(Budget.tenant == tenant)
    stmt = stmt.where(
        Budget.api_key_id == api_key_id if api_key_id else Budget.api_key_id.is_(None)
    )
    return (await session.execute(stmt.with_for_update())).scalar_one_or_none()


async def set_budget(
    session: AsyncSession,
    *,
    tenant: str,
    api_key_id: str | None,
    budget_usd: Decimal,
    period: BudgetPeriod | None = None,
) -> Budget:
    """Set (or change) the budget of a key, or with `api_key_id` None the default budget of
    the tenant's keys that have none. Changing the period starts the new one now; None
    keeps the budget's period (a new budget is monthly)."""
    if budget_usd < 0:
        raise InvalidRequest("invalid_budget", "A budget cannot be negative.")
    now = utcnow()
    budget = await _find(session, tenant, api_key_id)
    period = period or (budget.period if budget is not None else BudgetPeriod.MONTH)
    if budget is None:
        budget = Budget(
            id=new_id("budget_"),
            tenant=tenant,
            api_key_id=api_key_id,
            period=period,
            period_start=period_start(period, now),
            spent_usd=_ZERO,
            reserved_usd=_ZERO,
            created_at=now,
        )
        session.add(budget)
    elif budget.period is not period:
        budget.spent_usd = _ZERO
        budget.period, budget.period_start = period, period_start(period, now)
    budget.budget_usd = budget_usd
    budget.updated_at = now
    await session.commit()
    return budget


async def lift_budget(session: AsyncSession, *, tenant: str, api_key_id: str | None) -> bool:
    """Remove the limit (spend is still counted); False if there was no budget."""
    budget = await _find(session, tenant, api_key_id)
    if budget is None:
        await session.rollback()
        return False
    budget.budget_usd = None
    budget.updated_at = utcnow()
    await session.commit()
    return True


async def budget_for_key(session: AsyncSession, key: ApiKey) -> Budget | None:
    """The budget a key's jobs spend from: its own, else its tenant's default, else None."""
    stmt = (
        sa.select(Budget)
        .where(
            Budget.tenant == key.tenant,
            sa.or_(Budget.api_key_id == key.id, Budget.api_key_id.is_(None)),
        )
        .order_by(Budget.api_key_id.is_(None))  # the key's own first
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def check_affordable(budget: Budget | None, amount: Decimal) -> None:
    """402 `budget_exceeded` when the budget's spend this period leaves less than `amount`
    (other jobs' reservations do not count: they may still give money back)."""
    if budget is None or budget.budget_usd is None:
        return
    spent = spent_now(budget)
    if spent + amount > budget.budget_usd:
        raise BudgetExceeded(
            f"The budget of this key is exhausted: spent {spent:.6f} of "
            f"{budget.budget_usd:.6f} USD this {budget.period.value} period; this request "
            f"may cost up to {amount:.6f} USD."
        )


# -- reservations ------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldJob:
    """The lease a reservation is made under: the job, its attempt and owner."""

    id: str
    attempt: int
    owner: str


@dataclass(frozen=True)
class Ask:
    """One job asking to hold `amount` more against its budget."""

    job: HeldJob
    amount: Decimal


async def reserve(
    session: AsyncSession, job: HeldJob, budget_id: str, amount: Decimal
) -> Reservation:
    """Hold `amount` more for the running job `job` against its budget (see `reserve_many`)."""
    return (await reserve_many(session, budget_id, [Ask(job, amount)]))[0]


async def reserve_many(
    session: AsyncSession, budget_id: str, asks: Sequence[Ask]
) -> list[Reservation]:
    """Hold money for running jobs against one budget, atomically, in the order asked: one
    guarded UPDATE (`spent + reserved + total <= budget`) adds them all, with the jobs'
    reservation rows, in one transaction; if they do not all fit, the budget row is locked
    and the asks that fit are granted in order. One transaction serves many jobs: a worker
    sends all that are waiting."""
    now = utcnow()
    b = _BUDGETS.c
    held = await _held_jobs(session, [a.job for a in asks])
    mine = [a for a in asks if a.job in held]
    # The common case first: everything fits, one guarded UPDATE and no locked read.
    if mine and await _add_reserved(session, budget_id, mine, now):
        await _hold(session, budget_id, mine, now)
        await session.commit()
        return [Reservation.RESERVED if a.job in held else Reservation.LOST for a in asks]
    # Not all fit: under the budget row's lock, grant in order the asks that do.
    row = (
        await session.execute(
            sa.select(b.budget_usd, b.period, b.period_start, b.spent_usd, b.reserved_usd)
            .where(b.id == budget_id)
            .with_for_update()
        )
    ).first()
    if row is None:  # the budget was deleted: nothing to hold against
        await session.rollback()
        return [Reservation.RESERVED if a.job in held else Reservation.LOST for a in asks]
    period = BudgetPeriod(row.period)
    over = period is not BudgetPeriod.TOTAL and row.period_start < period_start(period, now)
    spent = _ZERO if over else Decimal(row.spent_usd)
    limit: Decimal | None = None if row.budget_usd is None else Decimal(row.budget_usd)
    free = None if limit is None else limit - spent - Decimal(row.reserved_usd)
    outcomes: list[Reservation] = []
    granted: list[Ask] = []
    for ask in asks:
        if ask.job not in held:
            outcomes.append(Reservation.LOST)
        elif free is None or ask.amount <= free:
            outcomes.append(Reservation.RESERVED)
            granted.append(ask)
            free = None if free is None else free - ask.amount
        elif limit is not None and spent + ask.amount > limit:
            outcomes.append(Reservation.EXHAUSTED)
        else:
            outcomes.append(Reservation.WAIT)
    if not granted:
        await session.rollback()
        return outcomes
    if not await _add_reserved(session, budget_id, granted, now):  # not under the row lock
        await session.rollback()
        return [Reservation.WAIT if o is Reservation.RESERVED else o for o in outcomes]
    await _hold(session, budget_id, granted, now)
    await session.commit()
    return outcomes


async def _add_reserved(
    session: AsyncSession, budget_id: str, asks: Sequence[Ask], now: datetime
) -> bool:
    # The guarded UPDATE that holds the asks' total: spend and reservations never pass the
    # budget, however many transactions run it at once. False if it would.
    b = _BUDGETS.c
    total = sum((a.amount for a in asks), _ZERO)
    got = await session.execute(
        sa.update(_BUDGETS)
        .where(
            b.id == budget_id,
            sa.or_(
                b.budget_usd.is_(None),
                _spent_in_period(now) + b.reserved_usd + total <= b.budget_usd,
            ),
        )
        .values(
            spent_usd=_spent_in_period(now),
            period_start=_current_start(now),
            reserved_usd=b.reserved_usd + total,
            updated_at=now,
        )
    )
    return bool(got.rowcount == 1)  # type: ignore[attr-defined]


async def _held_jobs(session: AsyncSession, jobs: Sequence[HeldJob]) -> set[HeldJob]:
    # Which of `jobs` are still running under the lease they were claimed with.
    j = _JOBS.c
    ids = [job.id for job in jobs]
    dialect = session.get_bind().dialect.name
    rows = await session.execute(
        sa.select(j.id, j.attempts, j.lease_owner).where(
            _among(j.id, ids, dialect), j.status == JobStatus.RUNNING
        )
    )
    return {HeldJob(r.id, r.attempts, r.lease_owner) for r in rows}


def _upsert_reservation(dialect: str) -> sa.Insert:
    # One statement for every granted ask (executemany): a job asking again (escalation)
    # tops its row up.
    insert = (
        postgresql.insert(_RESERVATIONS)
        if dialect == "postgresql"
        else sqlite.insert(_RESERVATIONS)
    )
    r = _RESERVATIONS.c
    return insert.on_conflict_do_update(
        index_elements=[r.job_id], set_={"amount_usd": r.amount_usd + insert.excluded.amount_usd}
    )


_UPSERTS = {name: _upsert_reservation(name) for name in ("postgresql", "sqlite")}


async def _hold(session: AsyncSession, budget_id: str, granted: list[Ask], now: datetime) -> None:
    # The jobs' reservation rows, as one cached statement run for every row.
    rows = [
        {"job_id": a.job.id, "budget_id": budget_id, "amount_usd": a.amount, "created_at": now}
        for a in granted
    ]
    await session.execute(_UPSERTS[session.get_bind().dialect.name], rows)


def _among(column: sa.ColumnElement[str], values: Sequence[str], dialect: str) -> Any:
    # `column IN (...)`; on Postgres `= ANY(:array)`, one SQL text whatever the count, so
    # the driver parses and prepares it once.
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=_ID_ARRAY))
    return column.in_(list(values))


async def settle(
    session: AsyncSession, job_ids: Sequence[str] | None = None, limit: int = 1000
) -> int:
    """Settle the reservations of jobs that ended (all of them, or of `job_ids`): their cost
    is added to the spend of the period they finished in, the reservation given back (a
    job that no longer exists gives it all back). Returns how many were settled. Safe to
    run anywhere at once: each reservation row is settled by the one transaction that
    deletes it."""
    j, r = _JOBS.c, _RESERVATIONS.c
    ended = sa.or_(j.id.is_(None), j.status.in_(TERMINAL_JOB_STATUSES))
    picked = (
        sa.select(r.job_id, r.budget_id, r.amount_usd, j.cost_usd, j.finished_at)
        .select_from(_RESERVATIONS.outerjoin(_JOBS, j.id == r.job_id))
        .where(ended)
        .order_by(r.job_id)
        .limit(limit)
    )
    if job_ids is not None:
        if not job_ids:
            return 0
        picked = picked.where(r.job_id.in_(list(job_ids)))
    if session.get_bind().dialect.name == "postgresql":
        # Settlers never wait on each other: each takes the rows nobody else holds.
        picked = picked.with_for_update(of=_RESERVATIONS, skip_locked=True)
    rows = (await session.execute(picked)).all()
    if not rows:
        await session.rollback()
        return 0
    await session.execute(
        sa.delete(_RESERVATIONS).where(r.job_id.in_([row.job_id for row in rows]))
    )
    by_budget: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_budget[row.budget_id].append(row)
    now = utcnow()
    for budget_id in sorted(by_budget):  # one order everywhere: no deadlock between settlers
        await _settle_budget(session, budget_id, by_budget[budget_id], now)
    await session.commit()
    return len(rows)


def settle_ended(
    conn: sa.Connection, ended: Sequence[tuple[str, str, Decimal]], now: datetime
) -> None:
    """Settle, in the connection's transaction, the reservations of jobs that end in it:
    (job id, budget id, cost) each. The worker's result write does this with the jobs'
    final states, so no other transaction is needed; on Postgres it is one statement per
    budget (deleting the reservations and updating the budget)."""
    by_budget: dict[str, tuple[list[str], Decimal]] = {}
    for job_id, budget_id, cost in ended:
        ids, spent = by_budget.get(budget_id, ([], _ZERO))
        by_budget[budget_id] = ([*ids, job_id], spent + cost)
    for budget_id in sorted(by_budget):  # one order everywhere: no deadlock between writers
        ids, spent = by_budget[budget_id]
        _settle_jobs(conn, budget_id, ids, spent, now)


def _settle_jobs(
    conn: sa.Connection, budget_id: str, ids: list[str], spent: Decimal, now: datetime
) -> None:
    # The jobs' cost is spent; what they held is given back. A job that held nothing (a
    # model priced at zero) cost nothing.
    b, r = _BUDGETS.c, _RESERVATIONS.c
    ended = sa.and_(r.budget_id == budget_id, _among(r.job_id, ids, conn.dialect.name))
    returned: Any
    if conn.dialect.name == "postgresql":
        gone = sa.delete(_RESERVATIONS).where(ended).returning(r.amount_usd).cte("gone")
        returned = sa.select(sa.func.coalesce(sa.func.sum(gone.c.amount_usd), 0))
        returned = returned.scalar_subquery()
    else:
        held = conn.execute(sa.select(sa.func.sum(r.amount_usd)).where(ended)).scalar()
        conn.execute(sa.delete(_RESERVATIONS).where(ended))
        returned, gone = Decimal(held or 0), None
    update = (
        sa.update(_BUDGETS)
        .where(b.id == budget_id)
        .values(
            spent_usd=_spent_in_period(now) + spent,
            period_start=_current_start(now),
            reserved_usd=b.reserved_usd - returned,
            updated_at=now,
        )
    )
    conn.execute(update if gone is None else update.add_cte(gone))


async def _settle_budget(
    session: AsyncSession, budget_id: str, rows: list[Any], now: datetime
) -> None:
    b = _BUDGETS.c
    budget = (
        await session.execute(sa.select(b.period).where(b.id == budget_id).with_for_update())
    ).first()
    if budget is None:
        return
    start = period_start(BudgetPeriod(budget.period), now)
    returned = sum((Decimal(r.amount_usd) for r in rows), _ZERO)
    # A job that finished before the current period began was spent in a period now over.
    spent = sum(
        (Decimal(r.cost_usd or 0) for r in rows if r.finished_at is None or r.finished_at >= start),
        _ZERO,
    )
    await session.execute(
        sa.update(_BUDGETS)
        .where(b.id == budget_id)
        .values(
            spent_usd=_spent_in_period(now) + spent,
            period_start=_current_start(now),
            reserved_usd=b.reserved_usd - returned,
            updated_at=now,
        )
    )
