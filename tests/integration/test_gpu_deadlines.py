"""Deadlines on a GPU worker, against real Postgres and Redis, with the worker runtime and
promptq's engine wrapper (slots, preemption rules, streams) over an in-memory vLLM engine
(tests/fake_engine.py; the real engine's tests are slow): a job waiting for an engine slot
past its deadline ends `expired` with the code of its deadline, billed nothing, announced
like any other ending, while the jobs already generating finish and are billed."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from promptq.catalog import load_catalog
from promptq.config import Settings
from promptq.constants import gpu_queue
from promptq.db import Database
from promptq.jobs import submit
from promptq.models import Batch, BatchStatus, Job, JobStatus, UsageRecord, WebhookEvent, utcnow
from promptq.workers.completion import ModelClient
from promptq.workers.runtime import WorkerRuntime
from tests.factories import get_job
from tests.fake_engine import FakeAsyncLLM, fake_vllm_engine
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio
QUEUE = gpu_queue("fake")
_prompts = itertools.count()


@pytest.fixture
def settings(integration_pg_url: str, redis_server: RedisServer, tmp_path: Path) -> Settings:
    models = tmp_path / "models.toml"
    models.write_text("""
[[models]]
name = "fake"
backend = "vllm"
source = "fake"
max_num_seqs = 2
input_per_mtok = 1
output_per_mtok = 2
""")
    return Settings(
        database_url=integration_pg_url,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/7",
        models_file=models,
        home=tmp_path,
        lease_seconds=6,
    )


@pytest.fixture
def fake() -> FakeAsyncLLM:
    """Two sequences, no kept-free slot, no preemption: a third request waits."""
    return FakeAsyncLLM(max_num_seqs=2)


@pytest.fixture
async def runtime(
    settings: Settings, db: Database, fake: FakeAsyncLLM
) -> AsyncIterator[WorkerRuntime]:
    async def make_backend(_: object) -> ModelClient:
        return fake_vllm_engine(fake, interactive_slots=0, preempt=False)

    catalog = load_catalog(settings.models_file)
    worker = WorkerRuntime(settings, catalog, make_backend, kind="gpu", max_in_flight=8)
    await asyncio.to_thread(worker.start)
    yield worker
    await asyncio.to_thread(worker.stop)


async def _add(db: Database, job_id: str, **fields: object) -> None:
    # Each job its own prompt: the response cache must not answer one from another.
    body = {"messages": [{"role": "user", "content": f"Prompt {next(_prompts)}."}]}
    async with db.session() as session:
        job = Job(
            id=job_id,
            tenant="t",
            model="fake",
            queue=QUEUE,
            body={**body, "model": "fake", "max_tokens": 8},
            max_attempts=3,
            created_at=utcnow(),
            **fields,
        )
        submit(session, job)
        await session.commit()


async def _until_status(db: Database, job_id: str, status: JobStatus) -> Job:
    async with asyncio.timeout(30):
        while (job := await get_job(db, job_id)).status is not status:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return job


async def _open_gate(runtime: WorkerRuntime, fake: FakeAsyncLLM) -> None:
    async def open_gate() -> None:
        fake.gate.set()

    await asyncio.to_thread(runtime.call, open_gate())


def _expired_count(code: str) -> float:
    labels = {"model": "fake", "outcome": "expired", "code": code}
    return REGISTRY.get_sample_value("promptq_jobs_finished_total", labels) or 0.0


async def _billed(db: Database) -> dict[str, int]:
    async with db.session() as session:
        rows = await session.execute(sa.select(UsageRecord.job_id, UsageRecord.completion_tokens))
        return {row.job_id: row.completion_tokens for row in rows}


async def test_a_native_job_waiting_for_an_engine_slot_past_its_deadline_ends_expired(
    runtime: WorkerRuntime, db: Database, fake: FakeAsyncLLM
) -> None:
    # Given two native jobs that take both of the engine's sequences and go on generating,
    # and a third, with a webhook, whose deadline is 2 s away
    await _add(db, "busy_1")
    await _add(db, "busy_2")
    await _add(
        db,
        "late",
        deadline_at=utcnow() + timedelta(seconds=2),
        webhook_url="https://hooks.example/x",
    )
    before = _expired_count("deadline_exceeded")

    # When the GPU worker runs them, and the busy ones finish only after that deadline
    run = asyncio.create_task(asyncio.to_thread(runtime.run_until_idle, [QUEUE], 60))
    late = await _until_status(db, "late", JobStatus.EXPIRED)
    await _open_gate(runtime, fake)
    counters = await run

    # Then the waiting job ended expired with deadline_exceeded at its deadline, on the
    # attempt it was claimed for; its engine request was aborted before any token
    assert (late.error_code, late.attempts, late.cost_usd) == ("deadline_exceeded", 1, None)
    assert late.finished_at is not None and late.deadline_at is not None
    assert late.finished_at >= late.deadline_at
    assert "engine_slot" in (late.error_message or "")
    assert "late-1" in fake.aborted and "late-1" not in fake.generated
    # And the busy ones finished and were billed; the expired one was not
    for job_id in ("busy_1", "busy_2"):
        assert (await get_job(db, job_id)).status is JobStatus.SUCCEEDED
    assert await _billed(db) == {"busy_1": 3, "busy_2": 3}
    assert (counters["succeeded"], counters["failed"]) == (2, 1)
    # And its ending was announced and counted like any other
    async with db.session() as session:
        events = (await session.scalars(sa.select(WebhookEvent))).all()
    assert [(e.event_type, e.payload["data"]["id"]) for e in events] == [("job.expired", "late")]
    assert _expired_count("deadline_exceeded") - before == 1


async def test_a_batch_line_waiting_for_a_bulk_slot_ends_with_its_batch_window(
    runtime: WorkerRuntime, db: Database, fake: FakeAsyncLLM
) -> None:
    # Given a batch whose window ends in 2 s, with three lines for an engine that runs
    # two bulk requests at once, which go on generating past the window
    now = utcnow()
    async with db.session() as session:
        session.add(
            Batch(
                id="batch_gpu",
                tenant="t",
                input_file_id="file-gpu",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                status=BatchStatus.IN_PROGRESS,
                created_at=now,
                expires_at=now + timedelta(seconds=2),
            )
        )
        await session.commit()
    for n in (1, 2, 3):
        await _add(db, f"line_{n}", batch_id="batch_gpu", custom_id=f"c{n}", line_no=n)

    # When the GPU worker runs them
    run = asyncio.create_task(asyncio.to_thread(runtime.run_until_idle, [QUEUE], 60))
    waiting = await _until_status(db, "line_3", JobStatus.EXPIRED)
    await _open_gate(runtime, fake)
    await run

    # Then the line still waiting for a slot ended batch_expired, never reaching the
    # engine; the two generating finished and were billed; the batch ended expired
    assert (waiting.error_code, waiting.attempts) == ("batch_expired", 1)
    assert "line_3-1" not in fake.submitted
    lines = [await get_job(db, f"line_{n}") for n in (1, 2)]
    assert [j.status for j in lines] == [JobStatus.SUCCEEDED] * 2
    assert await _billed(db) == {"line_1": 3, "line_2": 3}
    async with db.session() as session:
        batch = await session.get(Batch, "batch_gpu")
    assert batch is not None and batch.status is BatchStatus.EXPIRED
