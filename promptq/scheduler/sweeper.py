"""The sweeper: the periodic reconciler that makes Postgres's truth happen in Redis.

It re-queues jobs whose lease expired (a dead worker), fails those out of attempts (a
poison prompt cannot loop forever), re-sends queued jobs whose message was never sent or
was lost (Redis restarted or flushed), validates batches left `validating` (their API
restarted), expires batches past their window and finalizes batches whose jobs are all
done. Queued native jobs past their deadline are expired on every sweep and, between
sweeps, every second, so that a job nobody takes ends close to its deadline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

import redis.asyncio as aioredis
import sqlalchemy as sa
import structlog
from celery import Celery

from promptq.batches import expire_batch, finalize_batch
from promptq.catalog import Catalog
from promptq.config import Settings
from promptq.constants import BROKER_EPOCH_KEY
from promptq.db import Database
from promptq.ids import new_id
from promptq.jobs import JobErrorCode, expire_queued, requeue_expired, resend
from promptq.jobs.transitions import EXPIRE_CHUNK
from promptq.metrics import JOBS_FINISHED, SWEEPER_ACTIONS
from promptq.models import Batch, BatchStatus, Job, utcnow
from promptq.scheduler.dispatch import dispatch_queued
from promptq.scheduler.validation import Validation, Validator

__all__ = ["SweepReport", "Sweeper"]

log = structlog.get_logger(__name__)

#: The report's counts exported as promptq_sweeper_actions_total{action} (`expired_jobs`
#: is counted where it happens: the deadline watch expires jobs between sweeps too).
SWEPT = ("requeued", "failed", "published", "expired_batches", "finalized_batches")
#: How often queued jobs' deadlines are looked at between sweeps (at most the interval).
_DEADLINE_WATCH_SECONDS = 1.0
#: How long the API that made a batch has to start validating it before the sweeper does.
_VALIDATION_GRACE_SECONDS = 10


@dataclass
class SweepReport:
    """What one sweep did, for logs and tests."""

    requeued: int = 0
    failed: int = 0
    published: int = 0
    expired_jobs: int = 0
    expired_batches: int = 0
    finalized_batches: int = 0
    broker_reset: bool = False
    errors: list[str] = field(default_factory=list)


class Sweeper:
    """One reconciler; run `sweep()` periodically (several sweepers may run at once)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        celery: Celery,
        redis: aioredis.Redis,
        catalog: Catalog,
    ) -> None:
        self.settings = settings
        self.db = db
        self.celery = celery
        self.redis = redis
        self.validator = Validator(
            Validation.from_settings(settings, db, catalog, celery),
            on_validated=SWEEPER_ACTIONS.labels(action="validations_resumed").inc,
        )

    async def run_forever(self) -> None:
        """Sweep every `sweep_interval_seconds`, and watch queued jobs' deadlines every
        second, until cancelled."""
        await asyncio.gather(self._sweep_forever(), self._watch_deadlines())

    async def _sweep_forever(self) -> None:
        while True:
            try:
                report = await self.sweep()
                if report.requeued or report.failed or report.published or report.broker_reset:
                    log.info("sweeper.swept", **report.__dict__)
            except Exception:
                log.exception("sweeper.failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    async def sweep(self) -> SweepReport:
        """One pass over leases, deliveries and batches."""
        report = SweepReport()
        await self._expired_leases(report)
        report.expired_jobs = await self.expire_deadlines()
        await self._broker_epoch(report)
        await self._deliver(report)
        await self._batches(report)
        await self._validating()
        for action in SWEPT:
            SWEEPER_ACTIONS.labels(action=action).inc(getattr(report, action))
        return report

    async def _expired_leases(self, report: SweepReport) -> None:
        async with self.db.session() as session:
            report.failed, report.requeued = await requeue_expired(session)

    async def expire_deadlines(self) -> int:
        """End queued native jobs whose deadline passed (`deadline_exceeded`), in chunks
        that each commit; returns how many. Their messages, if still in Redis, claim
        nothing."""
        expired = 0
        while True:
            async with self.db.session() as session:
                rows = await expire_queued(session, limit=EXPIRE_CHUNK)
            for _, model in rows:
                JOBS_FINISHED.labels(model or "", "expired", JobErrorCode.DEADLINE_EXCEEDED).inc()
            expired += len(rows)
            if len(rows) < EXPIRE_CHUNK:
                break
        if expired:
            SWEEPER_ACTIONS.labels(action="expired_jobs").inc(expired)
            log.info("sweeper.expired_jobs", jobs=expired)
        return expired

    async def _watch_deadlines(self) -> None:
        pause = min(_DEADLINE_WATCH_SECONDS, self.settings.sweep_interval_seconds)
        while True:
            await asyncio.sleep(pause)
            try:
                await self.expire_deadlines()
            except Exception:
                log.exception("sweeper.deadlines_failed")

    async def _broker_epoch(self, report: SweepReport) -> None:
        # A missing epoch key means Redis lost its data: every queued job's message may be
        # gone, so all of them are sent again (claims are guarded, duplicates are harmless).
        try:
            created = await self.redis.set(BROKER_EPOCH_KEY, new_id("epoch_"), nx=True)
        except Exception as exc:
            report.errors.append(f"redis: {exc}")
            return
        if created:
            async with self.db.session() as session:
                await resend(session)
            report.broker_reset = True

    async def _deliver(self, report: SweepReport) -> None:
        cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after_seconds)
        where = sa.or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff)
        async with self.db.session() as session:
            report.published = await dispatch_queued(
                session, self.celery, self.settings.chunk_size, where, limit=20_000
            )

    async def _validating(self) -> None:
        # A batch still validating a while after it was made: its API process may have
        # died. Validate it here, in the background (the lock makes this a no-op while the
        # API still works on it).
        cutoff = utcnow() - timedelta(seconds=_VALIDATION_GRACE_SECONDS)
        async with self.db.session() as session:
            ids = (
                await session.scalars(
                    sa.select(Batch.id).where(
                        Batch.status == BatchStatus.VALIDATING, Batch.created_at < cutoff
                    )
                )
            ).all()
        for batch_id in ids:
            self.validator.start(batch_id)

    async def _batches(self, report: SweepReport) -> None:
        now = utcnow()
        async with self.db.session() as session:
            overdue = (
                (
                    await session.execute(
                        sa.select(Batch).where(
                            Batch.status.in_([BatchStatus.IN_PROGRESS, BatchStatus.VALIDATING]),
                            Batch.expires_at < now,
                        )
                    )
                )
                .scalars()
                .all()
            )
            for batch in overdue:
                await expire_batch(session, batch)
                report.expired_batches += 1
            open_ids = (
                (
                    await session.execute(
                        sa.select(Batch.id).where(
                            sa.or_(
                                Batch.status.in_(
                                    [
                                        BatchStatus.IN_PROGRESS,
                                        BatchStatus.CANCELLING,
                                        BatchStatus.FINALIZING,
                                    ]
                                ),
                                sa.and_(
                                    Batch.status == BatchStatus.EXPIRED,
                                    Batch.finalizing_at.is_(None),
                                ),
                            )
                        )
                    )
                )
                .scalars()
                .all()
            )
        for batch_id in open_ids:
            async with self.db.session() as session:
                report.finalized_batches += await finalize_batch(session, batch_id)
