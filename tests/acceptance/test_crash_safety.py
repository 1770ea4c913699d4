"""Nothing lost, nothing billed twice: workers killed mid-batch, Redis restarted or
flushed, a poison job that kills every worker that runs it. Each test gets its own
deployment (database, Redis, API, scheduler), since it kills parts of it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from promptq.db import create_sync_engine
from tests.acceptance.helpers import chat_line, read_file, upload_and_run, wait_batch, write_jsonl
from tests.conftest import stack_env
from tests.procs import wait_for
from tests.stack import RedisServer, Stack, create_database, drop_database, make_key


class Deployment:
    def __init__(
        self, stack: Stack, redis_server: RedisServer, pg_url: str, api: str, key: str
    ) -> None:
        self.stack, self.redis, self.pg_url = stack, redis_server, pg_url
        self.client = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def scalar(self, sql: str) -> object:
        engine = create_sync_engine(self.pg_url)
        with engine.connect() as conn:
            value = conn.execute(sa.text(sql)).scalar()
        engine.dispose()
        return value


@pytest.fixture
def deployment(
    log_dir: Path, models_file: Path, tmp_path: Path, sim_url: str
) -> Iterator[Deployment]:
    pg_url = create_database("promptq_crash")
    redis_server = RedisServer(log_dir)
    stack = Stack(stack_env(pg_url, redis_server.url, models_file, tmp_path), log_dir)
    try:
        api = stack.api()
        stack.scheduler()
        yield Deployment(stack, redis_server, pg_url, api, make_key(pg_url, "crash"))
    finally:
        stack.stop()
        redis_server.stop()
        drop_database(pg_url)


def _batch(d: Deployment, tmp_path: Path, n: int, directive: str = "") -> dict:  # type: ignore[type-arg]
    lines = [chat_line(f"l-{i}", f"line {i} {directive}") for i in range(n)]
    return upload_and_run(d.client, write_jsonl(tmp_path / "batch.jsonl", lines))


def _assert_each_line_once_and_billed_once(d: Deployment, batch: dict, n: int) -> None:  # type: ignore[type-arg]
    assert batch["status"] == "completed"
    assert batch["request_counts"]["completed"] == n
    output = read_file(d.client, batch["output_file_id"])
    assert sorted(x["custom_id"] for x in output) == sorted(f"l-{i}" for i in range(n))
    ledger = d.scalar(f"SELECT count(*) FROM usage_records WHERE batch_id = '{batch['id']}'")
    billed = d.scalar(
        f"SELECT count(DISTINCT job_id) FROM usage_records WHERE batch_id = '{batch['id']}'"
    )
    assert ledger == billed == n


def test_a_worker_killed_mid_batch_loses_nothing_and_bills_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a 1,000-line batch of slowish lines being worked on
    worker = deployment.stack.worker()
    batch = _batch(deployment, tmp_path, 1000, "[[sim:sleep=0.05]]")
    wait_for(
        lambda: (
            deployment.client.get(f"/v1/batches/{batch['id']}").json()["request_counts"][
                "completed"
            ]
            >= 200
        ),
        60,
        "progress",
    )
    # When its worker is SIGKILLed and a fresh one started
    worker.kill()
    deployment.stack.worker()
    # Then all 1,000 lines finish exactly once, and each is billed exactly once
    final = wait_batch(deployment.client, batch["id"], timeout=180)
    _assert_each_line_once_and_billed_once(deployment, final, 1000)


@pytest.mark.parametrize("outage", ["restart", "flushall"])
def test_redis_losing_its_data_mid_batch_loses_nothing(
    deployment: Deployment, tmp_path: Path, outage: str
) -> None:
    # Given a batch in progress
    deployment.stack.worker()
    batch = _batch(deployment, tmp_path, 600, "[[sim:sleep=0.05]]")
    wait_for(
        lambda: (
            deployment.client.get(f"/v1/batches/{batch['id']}").json()["request_counts"][
                "completed"
            ]
            >= 50
        ),
        60,
        "progress",
    )
    # When Redis loses every message
    if outage == "flushall":
        redis.Redis.from_url(deployment.redis.url).flushall()
        job = deployment.client.post(
            "/v1/jobs",
            json={"model": "sim-gpt", "messages": [{"role": "user", "content": "after the flush"}]},
        )
    else:
        deployment.redis.stop()
        # While it is down the API is not ready (503, never 500), polling works,
        # and a new job is still accepted into Postgres
        ready = deployment.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"].startswith("unavailable")
        assert deployment.client.get(f"/v1/batches/{batch['id']}").status_code == 200
        job = deployment.client.post(
            "/v1/jobs",
            json={"model": "sim-gpt", "messages": [{"role": "user", "content": "while down"}]},
        )
        deployment.redis.start()
    assert job.status_code == 202, job.text
    # Then the batch and the job still complete, every line once
    final = wait_batch(deployment.client, batch["id"], timeout=180)
    _assert_each_line_once_and_billed_once(deployment, final, 600)
    wait_for(
        lambda: (
            deployment.client.get(f"/v1/jobs/{job.json()['id']}").json()["status"] == "succeeded"
        ),
        60,
        "the job",
    )


def test_a_poison_job_that_kills_its_worker_fails_after_max_attempts(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a batch with one line that kills every worker that runs it (here the test
    # plays the poison: it SIGKILLs whichever worker holds that line)
    lines = [chat_line(f"l-{i}", f"line {i}") for i in range(50)]
    lines.append(chat_line("poison", "poison [[sim:sleep=30]]"))
    batch = upload_and_run(deployment.client, write_jsonl(tmp_path / "p.jsonl", lines))
    poison_id = f"job_{batch['id'].removeprefix('batch_')}_51"
    kills = 0
    worker = deployment.stack.worker()
    deadline = time.monotonic() + 240
    # When every worker that starts the poison line dies (each new attempt is killed)
    while (poison := deployment.client.get(f"/v1/jobs/{poison_id}").json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, poison
        if poison["status"] == "running" and poison["attempts"] > kills:
            worker.kill()
            kills += 1
            worker = deployment.stack.worker()
        time.sleep(0.1)
    # Then it ends failed after its maximum attempts, and the rest of the batch completes
    assert poison["status"] == "failed", (poison, kills)
    assert poison["error"]["code"] == "max_attempts_exceeded"
    assert poison["attempts"] == kills == 4
    final = wait_batch(deployment.client, batch["id"], timeout=60)
    errors = read_file(deployment.client, final["error_file_id"])
    assert final["request_counts"] == {
        "total": 51,
        "completed": 50,
        "failed": 1,
        "cancelled": 0,
        "expired": 0,
    }, errors[:3]
