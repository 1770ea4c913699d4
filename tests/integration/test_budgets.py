"""Budgets against a real Postgres: reservations are atomic under concurrency, settle with
the real cost, and periods start again on UTC calendar boundaries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from promptq.budgets import (
    Ask,
    BudgetExceeded,
    HeldJob,
    Reservation,
    budget_for_key,
    check_affordable,
    lift_budget,
    period_start,
    reserve,
    reserve_many,
    set_budget,
    settle,
)
from promptq.db import Database
from promptq.jobs import ClaimedJob, JobFailure, JobOutcome, record_finished
from promptq.keys import create_key
from promptq.models import Budget, BudgetPeriod, Job, JobStatus, utcnow
from promptq.models import Reservation as ReservationRow

pytestmark = pytest.mark.anyio

OWNER = "test-worker"


async def _running_jobs(db: Database, n: int, budget_id: str, tenant: str = "t") -> list[HeldJob]:
    now = utcnow()
    async with db.session() as session:
        session.add_all(
            Job(
                id=f"job_b{i:04d}",
                tenant=tenant,
                model="m",
                status=JobStatus.RUNNING,
                attempts=1,
                max_attempts=3,
                lease_owner=OWNER,
                created_at=now,
            )
            for i in range(n)
        )
        await session.commit()
    return [HeldJob(f"job_b{i:04d}", 1, OWNER) for i in range(n)]


async def _finish(db: Database, job_id: str, cost: Decimal | None) -> None:
    status = JobStatus.SUCCEEDED if cost is not None else JobStatus.FAILED
    async with db.session() as session:
        await session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(status=status, cost_usd=cost, finished_at=utcnow(), lease_owner=None)
        )
        await session.commit()


async def _budget(db: Database, budget_id: str) -> Budget:
    async with db.session() as session:
        budget = await session.get(Budget, budget_id)
        assert budget is not None
        return budget


async def _new_budget(db: Database, amount: str, period: BudgetPeriod = BudgetPeriod.DAY) -> str:
    async with db.session() as session:
        _, key = await create_key(session, "k", tenant="t")
        budget = await set_budget(
            session, tenant="t", api_key_id=key.id, budget_usd=Decimal(amount), period=period
        )
        return budget.id


async def test_concurrent_reservations_never_pass_the_budget(db: Database) -> None:
    # Given a budget of 1 USD and 60 running jobs that each want 0.07 USD
    budget_id = await _new_budget(db, "1")
    jobs = await _running_jobs(db, 60, budget_id)

    # When they all reserve at once, each in its own transaction
    async def one(job: HeldJob) -> Reservation:
        async with db.session() as session:
            return await reserve(session, job, budget_id, Decimal("0.07"))

    outcomes = await asyncio.gather(*(one(job) for job in jobs))

    # Then exactly floor(1 / 0.07) = 14 got money, and the budget holds just that
    assert outcomes.count(Reservation.RESERVED) == 14
    assert outcomes.count(Reservation.WAIT) == 46  # nothing is spent yet: they may wait
    budget = await _budget(db, budget_id)
    assert budget.reserved_usd == Decimal("0.98")
    assert budget.spent_usd == 0


async def test_settle_moves_the_real_cost_to_spent_and_gives_the_rest_back(db: Database) -> None:
    # Given two jobs holding 0.40 USD each of a 1 USD budget
    budget_id = await _new_budget(db, "1")
    a, b = await _running_jobs(db, 2, budget_id)
    for job in (a, b):
        async with db.session() as session:
            assert await reserve(session, job, budget_id, Decimal("0.4")) is Reservation.RESERVED

    # When one succeeds at 0.25 USD and the other fails, and both are settled twice
    await _finish(db, a.id, Decimal("0.25"))
    await _finish(db, b.id, None)
    async with db.session() as session:
        assert await settle(session) == 2
    async with db.session() as session:
        assert await settle(session) == 0

    # Then the budget spent 0.25 and holds nothing; the jobs hold nothing either
    budget = await _budget(db, budget_id)
    assert (budget.spent_usd, budget.reserved_usd) == (Decimal("0.25"), Decimal(0))
    async with db.session() as session:
        held = await session.scalar(sa.select(sa.func.count()).select_from(ReservationRow))
    assert held == 0


async def test_exhausted_when_spend_alone_leaves_no_room(db: Database) -> None:
    # Given a 0.5 USD budget with 0.45 spent
    budget_id = await _new_budget(db, "0.5")
    first, second = await _running_jobs(db, 2, budget_id)
    async with db.session() as session:
        assert await reserve(session, first, budget_id, Decimal("0.45")) is Reservation.RESERVED
    await _finish(db, first.id, Decimal("0.45"))
    async with db.session() as session:
        await settle(session, [first.id])

    # When a job wants 0.1 more
    async with db.session() as session:
        outcome = await reserve(session, second, budget_id, Decimal("0.1"))

    # Then it is refused for good, and the API refuses such a request with a 402
    assert outcome is Reservation.EXHAUSTED
    budget = await _budget(db, budget_id)
    with pytest.raises(BudgetExceeded) as refused:
        check_affordable(budget, Decimal("0.1"))
    assert refused.value.http_status == 402
    check_affordable(budget, Decimal("0.05"))  # what still fits is allowed


async def test_a_new_period_starts_from_zero(db: Database) -> None:
    # Given a daily budget fully spent yesterday
    budget_id = await _new_budget(db, "1")
    (job,) = await _running_jobs(db, 1, budget_id)
    yesterday = period_start(BudgetPeriod.DAY, utcnow()) - timedelta(hours=1)
    async with db.session() as session:
        await session.execute(
            sa.update(Budget)
            .where(Budget.id == budget_id)
            .values(spent_usd=Decimal(1), period_start=period_start(BudgetPeriod.DAY, yesterday))
        )
        await session.commit()

    # When a job reserves today
    async with db.session() as session:
        outcome = await reserve(session, job, budget_id, Decimal("0.9"))

    # Then yesterday's spend no longer counts
    assert outcome is Reservation.RESERVED
    budget = await _budget(db, budget_id)
    assert budget.spent_usd == 0
    assert budget.period_start == period_start(BudgetPeriod.DAY, utcnow())


async def test_a_lost_lease_reserves_nothing(db: Database) -> None:
    budget_id = await _new_budget(db, "1")
    (job,) = await _running_jobs(db, 1, budget_id)
    async with db.session() as session:
        outcome = await reserve(session, HeldJob(job.id, 2, OWNER), budget_id, Decimal("0.1"))
    assert outcome is Reservation.LOST
    assert (await _budget(db, budget_id)).reserved_usd == 0


async def test_lifted_budget_reserves_anything_and_keeps_counting(db: Database) -> None:
    budget_id = await _new_budget(db, "0.01")
    (job,) = await _running_jobs(db, 1, budget_id)
    async with db.session() as session:
        assert await lift_budget(session, tenant="t", api_key_id=None) is False
        key_id = (await _budget(db, budget_id)).api_key_id
        assert await lift_budget(session, tenant="t", api_key_id=key_id) is True
    async with db.session() as session:
        assert await reserve(session, job, budget_id, Decimal("5")) is Reservation.RESERVED
    await _finish(db, job.id, Decimal("3"))
    async with db.session() as session:
        await settle(session, [job.id])
    assert (await _budget(db, budget_id)).spent_usd == Decimal(3)


async def test_a_key_spends_from_its_own_budget_else_its_tenants_default(db: Database) -> None:
    async with db.session() as session:
        _, own = await create_key(session, "own", tenant="acme")
        _, other = await create_key(session, "other", tenant="acme")
        _, stranger = await create_key(session, "stranger", tenant="elsewhere")
        default = await set_budget(
            session,
            tenant="acme",
            api_key_id=None,
            budget_usd=Decimal(10),
            period=BudgetPeriod.MONTH,
        )
        mine = await set_budget(
            session,
            tenant="acme",
            api_key_id=own.id,
            budget_usd=Decimal(1),
            period=BudgetPeriod.WEEK,
        )
        assert (await budget_for_key(session, own)).id == mine.id  # type: ignore[union-attr]
        assert (await budget_for_key(session, other)).id == default.id  # type: ignore[union-attr]
        assert await budget_for_key(session, stranger) is None


@pytest.mark.parametrize(
    ("period", "now", "start"),
    [
        (
            BudgetPeriod.DAY,
            datetime(2026, 3, 4, 23, 59, tzinfo=UTC),
            datetime(2026, 3, 4, tzinfo=UTC),
        ),
        (BudgetPeriod.WEEK, datetime(2026, 3, 4, 12, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
        (
            BudgetPeriod.MONTH,
            datetime(2026, 3, 31, 23, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
        ),
        (BudgetPeriod.TOTAL, datetime(2026, 3, 31, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
async def test_periods_start_on_utc_calendar_boundaries(
    period: BudgetPeriod, now: datetime, start: datetime
) -> None:
    assert period_start(period, now) == start


async def test_a_deleted_job_gives_its_reservation_back(db: Database) -> None:
    budget_id = await _new_budget(db, "1")
    (job,) = await _running_jobs(db, 1, budget_id)
    async with db.session() as session:
        assert await reserve(session, job, budget_id, Decimal("0.3")) is Reservation.RESERVED
        await session.execute(sa.delete(Job).where(Job.id == job.id))
        await session.commit()
    async with db.session() as session:
        assert await settle(session) == 1
    budget = await _budget(db, budget_id)
    assert (budget.spent_usd, budget.reserved_usd) == (Decimal(0), Decimal(0))


async def test_a_top_up_adds_to_the_jobs_reservation(db: Database) -> None:
    budget_id = await _new_budget(db, "1")
    (job,) = await _running_jobs(db, 1, budget_id)
    for amount in ("0.2", "0.3"):
        async with db.session() as session:
            assert await reserve(session, job, budget_id, Decimal(amount)) is Reservation.RESERVED
    async with db.session() as session:
        row = await session.get(ReservationRow, job.id)
        assert row is not None and row.amount_usd == Decimal("0.5")
    await _finish(db, job.id, Decimal("0.45"))
    async with db.session() as session:
        assert await settle(session, [job.id]) == 1
    budget = await _budget(db, budget_id)
    assert (budget.spent_usd, budget.reserved_usd) == (Decimal("0.45"), Decimal(0))


async def test_many_asks_in_one_transaction_are_granted_in_order(db: Database) -> None:
    # Given a 1 USD budget and 20 running jobs asking 0.07 USD each, in one transaction
    budget_id = await _new_budget(db, "1")
    jobs = await _running_jobs(db, 20, budget_id)
    asks = [Ask(job, Decimal("0.07")) for job in jobs]
    asks.insert(5, Ask(HeldJob("job_gone", 1, OWNER), Decimal("0.01")))  # no such job

    async with db.session() as session:
        outcomes = await reserve_many(session, budget_id, asks)

    # Then the first 14 got money, the job that does not run got nothing, the rest wait
    assert outcomes[5] is Reservation.LOST
    rest = outcomes[:5] + outcomes[6:]
    assert rest == [Reservation.RESERVED] * 14 + [Reservation.WAIT] * 6
    assert (await _budget(db, budget_id)).reserved_usd == Decimal("0.98")


async def test_the_result_write_settles_its_jobs_reservations(any_db: Database) -> None:
    # Given two running jobs, one holding 0.4 + 0.1 USD (an escalation topped it up), the
    # other 0.4 USD, of a 1 USD budget
    budget_id = await _new_budget(any_db, "1")
    a, b = await _running_jobs(any_db, 2, budget_id)
    for job, amount in ((a, "0.4"), (a, "0.1"), (b, "0.4")):
        async with any_db.session() as session:
            got = await reserve(session, job, budget_id, Decimal(amount))
            assert got is Reservation.RESERVED

    # When the worker stores one's answer (0.25 USD) and the other's failure in one group
    def claimed(job: HeldJob) -> ClaimedJob:
        return ClaimedJob(job.id, "t", None, "m", {}, 5, 1, 3, OWNER, budget_id=budget_id)

    answer = JobOutcome("hi", "stop", 10, 5, Decimal("0.25"), {}, None)
    async with any_db.session() as session:
        stored = await record_finished(
            session, [(claimed(a), answer), (claimed(b), JobFailure("provider_error", "no"))]
        )

    # Then the budget spent 0.25 and holds nothing, with no settler involved
    assert stored == [True, True]
    budget = await _budget(any_db, budget_id)
    assert (budget.spent_usd, budget.reserved_usd) == (Decimal("0.25"), Decimal(0))
    async with any_db.session() as session:
        assert await settle(session) == 0
