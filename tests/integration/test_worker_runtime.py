"""The worker runtime in-process, against real Postgres, Redis and the simulated provider
over HTTP: burst mode runs what is queued and returns; a side task that dies stops the
worker loudly; a live worker's heartbeat is what `promptq worker --check` reads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from promptq.config import Settings
from promptq.constants import REMOTE_QUEUE
from promptq.db import Database
from promptq.models import JobStatus
from promptq.workers.launch import check_workers, remote_runtime
from promptq.workers.runtime import WorkerRuntime
from promptq.workers.supervisor import WorkerDied
from tests.conftest import SIM_KEY
from tests.factories import add_jobs, get_job
from tests.procs import wait_for
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio

PROMPT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


@pytest.fixture
def settings(
    integration_pg_url: str,
    redis_server: RedisServer,
    models_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    monkeypatch.setenv("SIM_PROVIDER_KEY", SIM_KEY)
    # A Redis database of its own: the acceptance tests' workers beat in database 0.
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/7"
    return Settings(
        database_url=integration_pg_url,
        redis_url=redis_url,
        models_file=models_file,
        home=tmp_path,
        lease_seconds=6,
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
    )


@pytest.fixture
async def runtime(settings: Settings, db: Database) -> AsyncIterator[WorkerRuntime]:
    """A started remote-worker runtime whose deaths are recorded, stopped at the end."""
    deaths: list[str] = []
    died = threading.Event()

    def on_death(reason: str) -> None:
        deaths.append(reason)
        died.set()

    worker = remote_runtime(settings, concurrency=8, on_death=on_death)
    worker.deaths, worker.died = deaths, died  # type: ignore[attr-defined]
    await asyncio.to_thread(worker.start)
    yield worker
    await asyncio.to_thread(worker.stop)


async def test_burst_mode_runs_every_queued_job_then_returns(
    runtime: WorkerRuntime, db: Database
) -> None:
    # Given three queued jobs on the remote queue
    await add_jobs(db, "job_a", "job_b", "job_c", model="sim-gpt", queue=REMOTE_QUEUE, body=PROMPT)
    # When the worker runs until idle
    counters = await asyncio.to_thread(runtime.run_until_idle, [REMOTE_QUEUE], 60)
    # Then each ran once and succeeded, as its counters and its rows say
    assert (counters["claimed"], counters["succeeded"], counters["failed"]) == (3, 3, 0)
    jobs = [await get_job(db, job_id) for job_id in ("job_a", "job_b", "job_c")]
    assert [(j.status, j.attempts, j.lease_owner) for j in jobs] == [
        (JobStatus.SUCCEEDED, 1, None)
    ] * 3
    # And a second run finds nothing to do
    again = await asyncio.to_thread(runtime.run_until_idle, [REMOTE_QUEUE], 60)
    assert again["claimed"] == 3


async def test_a_dead_heartbeat_stops_the_worker_with_a_clear_log_line(
    runtime: WorkerRuntime,
) -> None:
    # Given a running worker
    heartbeat = runtime.supervisor.tasks["heartbeat"]

    async def kill() -> None:
        while not heartbeat.done():  # a cancel can be lost inside a Redis command
            heartbeat.cancel()
            await asyncio.wait([heartbeat], timeout=0.1)

    with structlog.testing.capture_logs() as logs:
        # When its heartbeat task dies
        await asyncio.to_thread(runtime.call, kill())
        assert await asyncio.to_thread(runtime.died.wait, 10)  # type: ignore[attr-defined]
    # Then the worker is told to stop, and says why, loudly
    assert runtime.deaths == ["side task 'heartbeat' was cancelled"]  # type: ignore[attr-defined]
    died = [e for e in logs if e["event"] == "worker.side_task_died"]
    assert [(e["log_level"], e["task"], e["action"]) for e in died] == [
        ("critical", "heartbeat", "stopping the worker")
    ]
    # And it takes no more work
    with pytest.raises(WorkerDied, match="heartbeat"):
        await asyncio.to_thread(runtime.run_until_idle, [REMOTE_QUEUE], 60)


async def test_check_passes_while_a_worker_of_the_kind_beats_and_fails_after_it_stops(
    settings: Settings, db: Database
) -> None:
    # Given no worker at all: the check fails
    assert check_workers(settings, "remote") == 1
    # When a remote worker runs
    worker = remote_runtime(settings, concurrency=2)
    await asyncio.to_thread(worker.start)
    try:
        # Then its first beat makes the check pass, for its kind only
        await asyncio.to_thread(
            wait_for, lambda: check_workers(settings, "remote") == 0, 10, "a heartbeat"
        )
        assert check_workers(settings, "gpu") == 1
    finally:
        await asyncio.to_thread(worker.stop)
    # And once it stopped cleanly the check fails again
    assert check_workers(settings, "remote") == 1
