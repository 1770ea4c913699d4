"""The cluster as the API's /metrics shows it: jobs and batches counted in Postgres, and
the messages waiting in Redis, read at most once per cache period however often
Prometheus (or several of them) scrape."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from promptq.catalog import Backend, Catalog
from promptq.constants import (
    BROKER_UNACKED_KEY,
    PRIORITY_STEPS,
    REMOTE_QUEUE,
    broker_list,
    gpu_queue,
)
from promptq.db import Database
from promptq.models import Batch, Job, JobStatus, utcnow
from promptq.queues import delivery_queue

__all__ = ["ClusterCollector", "ClusterSnapshot", "ClusterView", "queues_of"]


@dataclass
class ClusterSnapshot:
    """One reading of the cluster; every count is exact at `taken_at`."""

    taken_at: float
    #: (queue, client priority) -> queued jobs
    queue_depth: dict[tuple[str, int], int] = field(default_factory=dict)
    #: queue -> age in seconds of its oldest queued job
    oldest_queued: dict[str, float] = field(default_factory=dict)
    #: (status, model) -> jobs
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: status -> batches
    batches: dict[str, int] = field(default_factory=dict)
    #: (queue, priority step) -> chunk messages waiting in Redis
    broker_messages: dict[tuple[str, int], int] = field(default_factory=dict)
    #: messages fetched by a worker and not yet acked
    broker_unacked: int = 0
    #: False when Redis could not be read (the Postgres numbers still stand)
    broker_up: bool = True


def queues_of(catalog: Catalog) -> list[str]:
    """Every queue a worker may consume for this models file."""
    gpu = sorted({gpu_queue(e.name) for e in catalog.values() if e.backend is Backend.VLLM})
    return [REMOTE_QUEUE, *gpu]


async def _read_postgres(db: Database, snapshot: ClusterSnapshot) -> None:
    now = utcnow()
    async with db.session() as session:
        queued = await session.execute(
            sa.select(Job.queue, Job.priority, sa.func.count(), sa.func.min(Job.created_at))
            .where(Job.status == JobStatus.QUEUED)
            .group_by(Job.queue, Job.priority)
        )
        for queue, priority, count, oldest in queued.all():
            name = queue or ""
            snapshot.queue_depth[(name, int(priority))] = int(count)
            age = max((now - oldest).total_seconds(), 0.0)
            snapshot.oldest_queued[name] = max(snapshot.oldest_queued.get(name, 0.0), age)
        jobs = await session.execute(
            sa.select(Job.status, Job.model, sa.func.count()).group_by(Job.status, Job.model)
        )
        for status, model, count in jobs.all():
            snapshot.jobs[(str(status), model or "")] = int(count)
        batches = await session.execute(
            sa.select(Batch.status, sa.func.count()).group_by(Batch.status)
        )
        snapshot.batches = {str(status): int(count) for status, count in batches.all()}


async def _read_redis(
    redis: aioredis.Redis, queues: Iterable[str], snapshot: ClusterSnapshot
) -> None:
    keys = [(queue, step) for queue in queues for step in range(PRIORITY_STEPS)]
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for queue, step in keys:
                # Interactive remote chunks travel on the remote workers' interactive queue.
                pipe.llen(broker_list(delivery_queue(queue, step), step))
            pipe.hlen(BROKER_UNACKED_KEY)
            lengths = await pipe.execute()
    except Exception:  # Redis down: say so, keep the Postgres view
        snapshot.broker_up = False
        return
    snapshot.broker_messages = {key: int(n) for key, n in zip(keys, lengths, strict=False)}
    snapshot.broker_unacked = int(lengths[-1])


class ClusterView:
    """Reads the cluster at most once per `max_age` seconds; concurrent scrapes share one
    reading."""

    def __init__(
        self, db: Database, redis: aioredis.Redis, catalog: Catalog, max_age: float
    ) -> None:
        self._db = db
        self._redis = redis
        self._queues = queues_of(catalog)
        self._max_age = max_age
        self._snapshot: ClusterSnapshot | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> ClusterSnapshot:
        """The cached reading, refreshed when older than `max_age`."""
        async with self._lock:
            current = self._snapshot
            if current is None or time.monotonic() - current.taken_at >= self._max_age:
                current = ClusterSnapshot(taken_at=time.monotonic())
                await _read_postgres(self._db, current)
                await _read_redis(self._redis, self._queues, current)
                self._snapshot = current
            return current


class ClusterCollector(Collector):
    """Prometheus families for one snapshot."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot
        depth = GaugeMetricFamily(
            "promptq_queue_depth",
            "Jobs waiting to run, per queue and client priority (0 most urgent).",
            labels=["queue", "priority"],
        )
        for (queue, priority), count in sorted(s.queue_depth.items()):
            depth.add_metric([queue, str(priority)], count)
        yield depth
        oldest = GaugeMetricFamily(
            "promptq_oldest_queued_seconds",
            "Age of the oldest job still waiting, per queue.",
            labels=["queue"],
        )
        for queue, age in sorted(s.oldest_queued.items()):
            oldest.add_metric([queue], age)
        yield oldest
        jobs = GaugeMetricFamily(
            "promptq_jobs",
            "Jobs in the database, per status and model.",
            labels=["status", "model"],
        )
        for (status, model), count in sorted(s.jobs.items()):
            jobs.add_metric([status, model], count)
        yield jobs
        batches = GaugeMetricFamily(
            "promptq_batches", "Batches in the database, per status.", labels=["status"]
        )
        for status, count in sorted(s.batches.items()):
            batches.add_metric([status], count)
        yield batches
        yield from self._broker()

    def _broker(self) -> Iterator[Metric]:
        s = self._snapshot
        messages = GaugeMetricFamily(
            "promptq_broker_messages",
            "Chunk messages waiting in Redis, per queue and priority step (0 served first).",
            labels=["queue", "step"],
        )
        for (queue, step), count in sorted(s.broker_messages.items()):
            messages.add_metric([queue, str(step)], count)
        yield messages
        yield GaugeMetricFamily(
            "promptq_broker_unacked",
            "Chunk messages taken by a worker and not yet acked.",
            value=s.broker_unacked,
        )
        yield GaugeMetricFamily(
            "promptq_broker_up", "1 if Redis answered the last reading.", value=int(s.broker_up)
        )
