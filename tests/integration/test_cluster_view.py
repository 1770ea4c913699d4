"""The API's cluster view: queue depth per queue and client priority, jobs and batches by
status, and the chunk messages in Redis at every priority step, against real services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from promptq.catalog import Catalog
from promptq.cluster_view import ClusterCollector, ClusterView
from promptq.config import Settings
from promptq.constants import REMOTE_QUEUE
from promptq.db import Database
from promptq.metrics import render
from promptq.models import Batch, BatchStatus, File, FilePurpose, Job, JobStatus, utcnow
from promptq.scheduler.dispatch import publish
from promptq.workers.celery_app import make_celery
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def private_redis(log_dir: Path) -> Iterator[RedisServer]:
    """A broker of this module's own: the session's Redis has a running remote worker,
    which would consume the chunk messages this module counts."""
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture
async def broker(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    sync_redis.Redis.from_url(private_redis.url).flushdb()
    client = aioredis.Redis.from_url(private_redis.url)
    yield client
    await client.aclose()


async def _add_jobs(db: Database) -> None:
    now = utcnow()
    async with db.session() as session:
        session.add(File(id="file_1", tenant="t", purpose=FilePurpose.BATCH, filename="in.jsonl"))
        await session.flush()
        session.add(
            Batch(
                id="batch_1",
                tenant="t",
                input_file_id="file_1",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                status=BatchStatus.IN_PROGRESS,
                expires_at=now + timedelta(days=1),
            )
        )
        await session.flush()
        rows = [
            ("a", "sim-gpt", JobStatus.QUEUED, 7, now - timedelta(seconds=90)),
            ("b", "sim-gpt", JobStatus.QUEUED, 7, now - timedelta(seconds=30)),
            ("c", "sim-gpt", JobStatus.QUEUED, 0, now - timedelta(seconds=10)),
            ("d", "sim-gpt", JobStatus.SUCCEEDED, 5, now),
            ("e", "sim-claude", JobStatus.FAILED, 5, now),
        ]
        for job_id, model, status, priority, created in rows:
            session.add(
                Job(
                    id=job_id,
                    tenant="t",
                    batch_id="batch_1",
                    model=model,
                    queue=REMOTE_QUEUE,
                    status=status,
                    priority=priority,
                    created_at=created,
                )
            )
        await session.commit()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_cluster_view_counts_jobs_batches_and_every_priority_step(
    db: Database, broker: aioredis.Redis, private_redis: RedisServer
) -> None:
    # Given queued jobs at client priorities 7 and 0, finished jobs, and chunk messages
    # published by promptq's own dispatcher at steps 0, 3 and 8
    await _add_jobs(db)
    celery = make_celery(Settings(redis_url=private_redis.url))
    publish(celery, [("x1", REMOTE_QUEUE, 0, False), ("x2", REMOTE_QUEUE, 8, False)], 32)
    publish(celery, [(f"y{i}", REMOTE_QUEUE, 3, False) for i in range(3)], 1)
    view = ClusterView(db, broker, Catalog({}), max_age=60)
    # When the view is read and rendered
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(await view.snapshot()))
    samples = _samples(render(registry).decode())
    # Then every number matches what was stored
    q = ("queue", REMOTE_QUEUE)
    assert samples[("promptq_queue_depth", (("priority", "7"), q))] == 2
    assert samples[("promptq_queue_depth", (("priority", "0"), q))] == 1
    assert 90 <= samples[("promptq_oldest_queued_seconds", (q,))] < 3600
    assert samples[("promptq_jobs", (("model", "sim-gpt"), ("status", "queued")))] == 3
    assert samples[("promptq_jobs", (("model", "sim-gpt"), ("status", "succeeded")))] == 1
    assert samples[("promptq_jobs", (("model", "sim-claude"), ("status", "failed")))] == 1
    assert samples[("promptq_batches", (("status", "in_progress"),))] == 1
    steps = {
        int(dict(labels)["step"]): value
        for (name, labels), value in samples.items()
        if name == "promptq_broker_messages"
    }
    assert steps == {0: 1, 1: 0, 2: 0, 3: 3, 4: 0, 5: 0, 6: 0, 7: 0, 8: 1, 9: 0}
    assert samples[("promptq_broker_up", ())] == 1


async def test_the_view_is_cached_until_it_is_older_than_max_age(
    db: Database, broker: aioredis.Redis
) -> None:
    # Given a view read once, with a long cache period
    view = ClusterView(db, broker, Catalog({}), max_age=3600)
    first = await view.snapshot()
    # When jobs are added and the view is read again
    await _add_jobs(db)
    # Then the cached reading is returned, and a view with no cache period sees the jobs
    assert await view.snapshot() is first
    fresh = await ClusterView(db, broker, Catalog({}), max_age=0).snapshot()
    assert sum(fresh.jobs.values()) == 5 and not first.jobs
