"""Deadlines against real Postgres, Redis (Celery's broker) and a simulated provider over
HTTP: a job waiting behind an open circuit stops waiting at its deadline (a native job's
own, a batch line's batch expiry) and ends `expired` with a stable code, having used no
attempt and sent nothing; a job whose deadline is not reached is served; a queued job
that no worker takes is expired by the scheduler's sweeper about a second after its
deadline, and its message, when a worker gets it, runs nothing."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from prometheus_client import REGISTRY

from promptq.catalog import load_catalog
from promptq.config import Settings
from promptq.constants import REMOTE_INTERACTIVE_QUEUE, REMOTE_QUEUE, broker_list
from promptq.db import Database
from promptq.jobs import expire_queued, submit
from promptq.models import Batch, BatchStatus, Job, JobStatus, UsageRecord, WebhookEvent, utcnow
from promptq.queues import queue_step
from promptq.scheduler.breaker import BreakerSettings, CircuitBreaker
from promptq.scheduler.dispatch import publish_jobs
from promptq.scheduler.sweeper import Sweeper
from promptq.workers.celery_app import make_celery
from promptq.workers.launch import remote_runtime
from promptq.workers.runtime import WorkerRuntime
from promptq.workers.traffic import traffic_redis
from tests.factories import get_job
from tests.sim import SimServer
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio
PROMPT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
_runs = itertools.count()


@pytest.fixture(scope="module")
def sim(log_dir: Path) -> Iterator[SimServer]:
    server = SimServer(log_dir, name="sim-deadline")
    yield server
    server.stop()


@pytest.fixture
def run() -> str:
    return f"d{next(_runs)}"


@pytest.fixture
def settings(
    integration_pg_url: str, redis_server: RedisServer, sim: SimServer, tmp_path: Path, run: str
) -> Settings:
    models = tmp_path / "models.toml"
    # "blocked" has one deployment, whose circuit the tests open; "healthy" is served.
    models.write_text(f"""
[[models]]
name = "blocked"
backend = "openai"
[[models.deployments]]
name = "blocked-{run}"
base_url = "{sim.url}/v1"

[[models]]
name = "healthy"
backend = "openai"
[[models.deployments]]
name = "healthy-{run}"
base_url = "{sim.url}/v1"
""")
    return Settings(
        database_url=integration_pg_url,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/7",
        models_file=models,
        home=tmp_path,
        lease_seconds=6,
        breaker_cooldown_seconds=60,  # an opened circuit stays open for the test
        breaker_cooldown_max_seconds=60,
    )


@pytest.fixture
async def runtime(settings: Settings, db: Database) -> AsyncIterator[WorkerRuntime]:
    worker = remote_runtime(settings, concurrency=8)
    await asyncio.to_thread(worker.start)
    yield worker
    await asyncio.to_thread(worker.stop)


async def _open_circuit(settings: Settings, deployment: str) -> None:
    redis = traffic_redis(settings.redis_url)
    breaker = CircuitBreaker(
        redis, BreakerSettings(cooldown_seconds=60, cooldown_max=60, failure_threshold=5)
    )
    for _ in range(5):
        await breaker.record(deployment, ok=False)
    assert await breaker.is_open(deployment)
    await redis.aclose()


async def _add(db: Database, job_id: str, model: str, **fields: object) -> None:
    async with db.session() as session:
        job = Job(
            id=job_id,
            tenant="t",
            model=model,
            queue=REMOTE_QUEUE,
            body={**PROMPT, "model": model},
            max_attempts=3,
            created_at=utcnow(),
            **fields,
        )
        submit(session, job)
        await session.commit()


async def test_a_job_behind_an_open_circuit_ends_at_its_deadline_without_an_attempt(
    runtime: WorkerRuntime, db: Database, settings: Settings, sim: SimServer, run: str
) -> None:
    # Given the only deployment of "blocked" has an open circuit, a job on it with a
    # deadline 4 s away (time to be claimed and start waiting, even on a busy machine),
    # and a job on a healthy model with a deadline a minute away
    await _open_circuit(settings, f"blocked-{run}")
    now = utcnow()
    await _add(db, "job_blocked", "blocked", deadline_at=now + timedelta(seconds=4))
    await _add(db, "job_healthy", "healthy", deadline_at=now + timedelta(seconds=60))
    calls_before = sim.calls()

    # When the worker runs them
    counters = await asyncio.to_thread(runtime.run_until_idle, [REMOTE_QUEUE], 60)

    # Then the blocked job ended expired with deadline_exceeded, on its first attempt,
    # after its deadline, and nothing was sent for it; the other was served
    blocked = await get_job(db, "job_blocked")
    assert (blocked.status, blocked.error_code) == (JobStatus.EXPIRED, "deadline_exceeded")
    assert blocked.attempts == 1 and blocked.waiting_reason is None
    assert blocked.finished_at is not None and blocked.deadline_at is not None
    assert blocked.finished_at >= blocked.deadline_at
    assert "circuit_open" in (blocked.error_message or "")
    healthy = await get_job(db, "job_healthy")
    assert (healthy.status, healthy.attempts) == (JobStatus.SUCCEEDED, 1)
    assert sim.calls() - calls_before == 1
    assert (counters["failed"], counters["succeeded"], counters["retried"]) == (1, 1, 0)


async def test_a_batch_line_behind_an_open_circuit_ends_batch_expired_with_its_batch(
    runtime: WorkerRuntime, db: Database, settings: Settings, sim: SimServer, run: str
) -> None:
    # Given a batch whose window ends in 1.5 s, with two lines on a model whose circuit
    # is open
    await _open_circuit(settings, f"blocked-{run}")
    now = utcnow()
    async with db.session() as session:
        session.add(
            Batch(
                id="batch_window",
                tenant="t",
                input_file_id="file-window",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                status=BatchStatus.IN_PROGRESS,
                created_at=now,
                expires_at=now + timedelta(seconds=1.5),
            )
        )
        await session.commit()
    for n in (1, 2):
        await _add(db, f"line_{n}", "blocked", batch_id="batch_window", custom_id=f"c{n}")
    calls_before = sim.calls()

    # When the worker runs them
    await asyncio.to_thread(runtime.run_until_idle, [REMOTE_QUEUE], 60)

    # Then both lines ended expired with OpenAI's batch_expired, on their first attempt,
    # nothing was sent, and the batch itself ends expired (not completed)
    lines = [await get_job(db, f"line_{n}") for n in (1, 2)]
    assert [(j.status, j.error_code, j.attempts) for j in lines] == [
        (JobStatus.EXPIRED, "batch_expired", 1)
    ] * 2
    assert sim.calls() == calls_before

    for _ in range(100):  # the worker's batch checker finalizes it within a second
        async with db.session() as session:
            batch = await session.get(Batch, "batch_window")
            assert batch is not None
            if batch.status is BatchStatus.EXPIRED:
                break
        await asyncio.sleep(0.1)
    assert batch.status is BatchStatus.EXPIRED
    assert batch.expired_at is not None


def _expired_counts(model: str) -> tuple[float, float]:
    # promptq_jobs_finished_total{outcome="expired"} and the sweeper's expired_jobs action.
    finished = REGISTRY.get_sample_value(
        "promptq_jobs_finished_total",
        {"model": model, "outcome": "expired", "code": "deadline_exceeded"},
    )
    swept = REGISTRY.get_sample_value("promptq_sweeper_actions_total", {"action": "expired_jobs"})
    return finished or 0.0, swept or 0.0


async def _submit_and_publish(
    settings: Settings, db: Database, job_id: str, **fields: object
) -> None:
    # As POST /v1/jobs does: the row (marked enqueued), then its message to Redis.
    async with db.session() as session:
        job = Job(
            id=job_id,
            tenant="t",
            model="healthy",
            queue=REMOTE_QUEUE,
            body={**PROMPT, "model": "healthy"},
            max_attempts=3,
            created_at=utcnow(),
            **fields,
        )
        submit(session, job)
        await session.commit()
        assert await publish_jobs(session, make_celery(settings), [job]) == 1


_INTERACTIVE_LIST = broker_list(REMOTE_INTERACTIVE_QUEUE, queue_step(5, interactive=True))


async def _empty_queue(settings: Settings) -> None:
    redis = aioredis.Redis.from_url(settings.redis_url)
    await redis.delete(_INTERACTIVE_LIST)
    await redis.aclose()


async def _take_message(settings: Settings) -> tuple[list[str], int]:
    # The chunk message a remote worker's interactive consumer would get next.
    redis = aioredis.Redis.from_url(settings.redis_url)
    raw = await redis.rpop(_INTERACTIVE_LIST)
    await redis.aclose()
    assert raw is not None, "the job's message is not in Redis"
    args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return args[0], args[1]


async def test_a_queued_job_nobody_takes_is_expired_by_the_sweeper_soon_after_its_deadline(
    db: Database, settings: Settings
) -> None:
    # Given a native job with a webhook and a deadline 2 s away, whose message waits in
    # Redis with no worker consuming its queue
    deadline = utcnow() + timedelta(seconds=2)
    before = _expired_counts("healthy")
    await _submit_and_publish(
        settings, db, "job_queued", deadline_at=deadline, webhook_url="https://hooks.example/x"
    )
    redis = aioredis.Redis.from_url(settings.redis_url)
    sweeper = Sweeper(
        settings, db, make_celery(settings), redis, load_catalog(settings.models_file)
    )

    # When the scheduler's sweeper runs (its full sweep every 10 s)
    assert settings.sweep_interval_seconds == 10
    running = asyncio.create_task(sweeper.run_forever())
    try:
        async with asyncio.timeout(30):
            while (job := await get_job(db, "job_queued")).status is JobStatus.QUEUED:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        running.cancel()
        await redis.aclose()
        await _empty_queue(settings)

    # Then it ended expired with deadline_exceeded within a few seconds of its deadline,
    # using no attempt and billing nothing
    assert (job.status, job.error_code) == (JobStatus.EXPIRED, "deadline_exceeded")
    assert job.finished_at is not None and job.deadline_at is not None
    assert timedelta(0) <= job.finished_at - job.deadline_at < timedelta(seconds=3)
    assert (job.attempts, job.started_at, job.cost_usd) == (0, None, None)
    async with db.session() as session:
        ledger = await session.scalar(sa.select(sa.func.count()).select_from(UsageRecord))
        events = (await session.scalars(sa.select(WebhookEvent))).all()
    assert ledger == 0
    # And its webhook and metrics tell of it like any other ending
    assert [(e.event_type, e.payload["data"]["status"]) for e in events] == [
        ("job.expired", "expired")
    ]
    after = _expired_counts("healthy")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_the_message_of_an_expired_job_runs_nothing_and_an_overdue_one_is_not_claimed(
    runtime: WorkerRuntime, db: Database, settings: Settings, sim: SimServer
) -> None:
    # Given a queued job the sweeper expired, and one whose deadline passed that the
    # sweeper has not seen yet, both with their messages still in Redis
    await _empty_queue(settings)
    for job_id in ("job_swept", "job_overdue"):
        await _submit_and_publish(
            settings, db, job_id, deadline_at=utcnow() + timedelta(seconds=0.5)
        )
    await asyncio.sleep(0.6)
    async with db.session() as session:
        assert await expire_queued(session, job_ids=["job_swept"]) == [("job_swept", "healthy")]
    calls_before = sim.calls()
    before = _expired_counts("healthy")

    # When a worker gets their messages
    claimed = 0
    for _ in range(2):
        ids, step = await _take_message(settings)
        claimed += await asyncio.to_thread(runtime.admit, ids, step)

    # Then it claims neither and calls no provider; the overdue one ends expired there,
    # on no attempt, and is counted
    assert claimed == 0 and sim.calls() == calls_before
    overdue = await get_job(db, "job_overdue")
    assert (overdue.status, overdue.error_code, overdue.attempts) == (
        JobStatus.EXPIRED,
        "deadline_exceeded",
        0,
    )
    assert _expired_counts("healthy")[0] - before[0] == 1
