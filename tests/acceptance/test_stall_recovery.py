"""A worker stopped (SIGSTOP) past its lease does not make recovery serial: the sweeper
re-queues its jobs, which run again in ordinary chunks on the other worker, in parallel;
every line completes once and is billed once. The run prints the batch's time with and
without the stall (BENCHMARKS.md, "Stall recovery", records them)."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from promptq.db import create_sync_engine
from tests.acceptance.helpers import chat_line, read_file, upload_and_run, wait_batch, write_jsonl
from tests.conftest import stack_env
from tests.procs import Child, wait_for
from tests.stack import RedisServer, Stack, create_database, drop_database, make_key

LINES = 320
PER_WORKER = "16"  # requests in flight per worker: 10 rounds of 1 s lines for 2 workers


class Deployment:
    def __init__(self, stack: Stack, pg_url: str, api: str, key: str) -> None:
        self.stack, self.pg_url = stack, pg_url
        self.client = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def rows(self, sql: str, **params: object) -> list[sa.Row[tuple[object, ...]]]:
        engine = create_sync_engine(self.pg_url)
        with engine.connect() as conn:
            found = list(conn.execute(sa.text(sql), params).all())
        engine.dispose()
        return found


@pytest.fixture
def deployment(
    log_dir: Path, models_file: Path, tmp_path: Path, sim_url: str
) -> Iterator[Deployment]:
    pg_url = create_database("promptq_stall")
    redis_server = RedisServer(log_dir)
    stack = Stack(stack_env(pg_url, redis_server.url, models_file, tmp_path), log_dir)
    try:
        api = stack.api()
        stack.scheduler()
        yield Deployment(stack, pg_url, api, make_key(pg_url, "stall"))
    finally:
        stack.stop()
        redis_server.stop()
        drop_database(pg_url)


def _run(d: Deployment, tmp_path: Path, name: str) -> dict:  # type: ignore[type-arg]
    token = secrets.token_hex(4)
    lines = [chat_line(f"l-{i}", f"{token} {i} [[sim:sleep=1]]") for i in range(LINES)]
    return upload_and_run(d.client, write_jsonl(tmp_path / f"{name}.jsonl", lines))


def _completed(d: Deployment, batch_id: str) -> int:
    counts: dict[str, int] = d.client.get(f"/v1/batches/{batch_id}").json()["request_counts"]
    return counts["completed"]


def _signal(worker: Child, sig: signal.Signals) -> None:
    os.killpg(worker.popen.pid, sig)


def test_a_worker_stopped_past_its_lease_does_not_serialise_recovery(
    deployment: Deployment, tmp_path: Path
) -> None:
    d = deployment
    first = d.stack.worker("--concurrency", PER_WORKER)
    d.stack.worker("--concurrency", PER_WORKER)
    # Given the time a batch takes on two workers
    start = time.monotonic()
    normal = wait_batch(d.client, _run(d, tmp_path, "normal")["id"], timeout=300)
    normal_s = time.monotonic() - start
    assert normal["request_counts"]["completed"] == LINES
    # When the same batch runs and one worker is stopped mid-way, past its lease
    start = time.monotonic()
    batch = _run(d, tmp_path, "stalled")
    wait_for(lambda: _completed(d, batch["id"]) >= LINES // 5, 120, "progress")
    _signal(first, signal.SIGSTOP)
    try:
        wait_for(
            lambda: bool(
                d.rows("SELECT 1 FROM jobs WHERE batch_id = :b AND lost_count > 0", b=batch["id"])
            ),
            60,
            "the sweeper to re-queue the stopped worker's jobs",
        )
    finally:
        _signal(first, signal.SIGCONT)
    final = wait_batch(d.client, batch["id"], timeout=600)
    stalled_s = time.monotonic() - start
    print(
        f"\nstall recovery: normal {normal_s:.1f} s, with a stall {stalled_s:.1f} s, "
        f"ratio {stalled_s / normal_s:.2f}"
    )
    # Then every line completed once and was billed once
    assert final["request_counts"]["completed"] == LINES
    output = read_file(d.client, final["output_file_id"])
    assert len({x["custom_id"] for x in output}) == LINES
    (billed,) = d.rows(
        "SELECT count(*), count(DISTINCT job_id) FROM usage_records WHERE batch_id = :b",
        b=batch["id"],
    )
    assert tuple(billed) == (LINES, LINES)
    # And the re-queued jobs ran again together, not one at a time: none was lost twice
    # (so none ran alone), and many of them finished within the same second
    lost = d.rows(
        "SELECT lost_count, extract(epoch FROM finished_at) AS done FROM jobs "
        "WHERE batch_id = :b AND lost_count > 0",
        b=batch["id"],
    )
    assert lost and {row.lost_count for row in lost} == {1}
    done = sorted(float(row.done) for row in lost)
    busiest = max(sum(1 for t in done if s <= t < s + 1.0) for s in done)
    assert busiest >= min(8, len(done)), done
