"""The GPU worker on vLLM (the CPU build here) with the small real model: real engine,
real tokens, priorities inside the engine, preemption for an interactive job, a prompt too
long failing alone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from promptq.db import create_sync_engine
from tests.acceptance.helpers import (
    chat_line,
    read_file,
    upload_and_run,
    wait_batch,
    wait_job,
    write_jsonl,
)
from tests.conftest import stack_env
from tests.procs import Child, free_port, wait_for
from tests.stack import RedisServer, Stack, create_database, drop_database, make_key

pytestmark = pytest.mark.gpu

MODELS = """
[[models]]
name = "smollm2"
backend = "vllm"
source = "smollm2-135m"
max_model_len = 1024
max_num_seqs = 32
cpu_kvcache_gib = 2
enforce_eager = true
input_per_mtok = 0.02
output_per_mtok = 0.04
"""


@dataclass(frozen=True)
class GpuDeployment:
    client: httpx.Client
    worker: Child
    metrics_url: str
    pg_url: str

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the worker's /metrics, 0 when it has none yet."""
        wanted = [f'{k}="{v}"' for k, v in {"model": "smollm2", **labels}.items()]
        for line in httpx.get(self.metrics_url, timeout=10).text.splitlines():
            if line.startswith(f"{name}{{") and all(w in line for w in wanted):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def deployment(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuDeployment]:
    """A deployment with one GPU worker serving the small model."""
    conf = tmp_path_factory.mktemp("gpu")
    (conf / "models.toml").write_text(MODELS)
    pg_url = create_database("promptq_gpu")
    redis_server = RedisServer(log_dir)
    env = stack_env(pg_url, redis_server.url, conf / "models.toml", conf)
    # The converted model is cached across runs, like a user's ~/.promptq.
    env["PROMPTQ_HOME"] = str(Path.home() / ".cache" / "promptq")
    env["PROMPTQ_LEASE_SECONDS"] = "120"
    env["PROMPTQ_CHUNK_SIZE"] = "16"
    stack = Stack(env, log_dir)
    try:
        api = stack.api()
        stack.scheduler()
        metrics_port = free_port()
        worker = stack._start(
            "gpu-worker",
            ["worker", "gpu", "--model", "smollm2", "--metrics-port", str(metrics_port)],
        )
        wait_for(
            lambda: "worker.ready" in worker.log_text() or not worker.alive(),
            900,
            "the GPU worker to load its engine",
        )
        assert worker.alive(), worker.log_text()[-3000:]
        key = make_key(pg_url, "gpu")
        with httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            yield GpuDeployment(client, worker, f"http://127.0.0.1:{metrics_port}/metrics", pg_url)
    finally:
        stack.stop()
        redis_server.stop()
        drop_database(pg_url)


@pytest.fixture(scope="module")
def gpu(deployment: GpuDeployment) -> httpx.Client:
    return deployment.client


def test_a_batch_gets_real_completions_with_engine_token_counts(
    gpu: httpx.Client, tmp_path: Path
) -> None:
    # Given a small batch for the real model
    lines = [
        chat_line(
            f"q-{i}",
            f"What is {i} plus {i}? Answer briefly.",
            model="smollm2",
            max_tokens=24,
            temperature=0,
        )
        for i in range(12)
    ]
    # When it runs on the GPU worker
    batch = wait_batch(
        gpu, upload_and_run(gpu, write_jsonl(tmp_path / "q.jsonl", lines))["id"], timeout=300
    )
    # Then every line has a real answer, with the engine's token counts and their cost
    assert batch["status"] == "completed", batch
    assert batch["request_counts"]["completed"] == 12
    output = read_file(gpu, batch["output_file_id"])
    for line in output:
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"].strip()
        assert 0 < body["usage"]["completion_tokens"] <= 24
        assert body["usage"]["prompt_tokens"] > 10  # the chat template's tokens are counted
    usage = batch["usage"]
    expected = (usage["input_tokens"] * 0.02 + usage["output_tokens"] * 0.04) / 1e6
    assert batch["cost_usd"] == pytest.approx(expected, rel=1e-6)
    job = gpu.get(f"/v1/jobs/{output[0]['response']['request_id']}").json()
    assert job["ttft_ms"] is not None and job["ttft_ms"] > 0


def test_an_urgent_job_overtakes_a_running_bulk_batch(gpu: httpx.Client, tmp_path: Path) -> None:
    # Given a 1,000-prompt bulk batch running on the engine
    lines = [
        chat_line(
            f"b-{i}",
            f"Write a short line about the number {i}.",
            model="smollm2",
            max_tokens=8 + (i % 4) * 4,  # mixed lengths, as in real bulk work
            temperature=0,
        )
        for i in range(1000)
    ]
    batch = upload_and_run(gpu, write_jsonl(tmp_path / "bulk.jsonl", lines), priority=5)
    wait_for(
        lambda: gpu.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] >= 40,
        300,
        "the bulk batch to be under way",
    )
    # When an urgent job is submitted
    urgent = gpu.post(
        "/v1/jobs",
        json={
            "model": "smollm2",
            "priority": 0,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    ).json()
    job = wait_job(gpu, urgent["id"], timeout=120)
    # Then it finishes while most of the backlog is still waiting
    done = gpu.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"]
    assert job["status"] == "succeeded", job
    assert done < 500, f"the urgent job waited for {done} bulk lines"
    gpu.post(f"/v1/batches/{batch['id']}/cancel")
    wait_batch(gpu, batch["id"], timeout=300)


def test_an_interactive_job_with_no_free_slot_preempts_a_bulk_line_that_runs_once(
    deployment: GpuDeployment, tmp_path: Path
) -> None:
    gpu = deployment.client
    before = deployment.metric("promptq_preempted_total")
    wasted_before = deployment.metric("promptq_preempted_tokens_total")
    # Given a batch holding every bulk slot, and two long interactive jobs in the two slots
    # kept free for interactive work
    lines = [
        chat_line(
            f"p-{i}",
            f"Write a long story about robot {i}.",
            model="smollm2",
            max_tokens=64,
            temperature=0,
        )
        for i in range(40)
    ]
    batch = upload_and_run(gpu, write_jsonl(tmp_path / "p.jsonl", lines), priority=5)
    long_jobs = [
        gpu.post(
            "/v1/jobs",
            json={
                "model": "smollm2",
                "max_tokens": 128,
                "messages": [{"role": "user", "content": f"Write a long poem about {topic}."}],
            },
        ).json()["id"]
        for topic in ("the sea", "the sky")
    ]
    wait_for(
        lambda: deployment.metric("promptq_engine_requests", state="running") >= 32,
        300,
        "every running slot to be generating",
    )
    # When a third interactive job arrives
    urgent = gpu.post(
        "/v1/jobs",
        json={
            "model": "smollm2",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    ).json()
    job = wait_job(gpu, urgent["id"], timeout=120)
    # Then it succeeds, having aborted a bulk line, whose generated tokens are counted
    assert job["status"] == "succeeded", job
    assert deployment.metric("promptq_preempted_total") - before >= 1
    assert deployment.metric("promptq_preempted_tokens_total") - wasted_before >= 1
    preempted_ids = set(
        re.findall(r"event='job\.preempted' job_id='([^']+)'", deployment.worker.log_text())
    )
    assert preempted_ids
    # And every preempted line ran again within its first attempt and was billed once, for
    # the run that finished: one usage row, with the job's own token counts
    done = wait_batch(gpu, batch["id"], timeout=600)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 40, done
    output = {
        line["response"]["request_id"]: line for line in read_file(gpu, done["output_file_id"])
    }
    engine = create_sync_engine(deployment.pg_url)
    with engine.connect() as conn:
        usage = conn.execute(
            sa.text(
                "SELECT job_id, count(*), sum(completion_tokens) FROM usage_records "
                "WHERE job_id = ANY(:ids) GROUP BY job_id"
            ),
            {"ids": sorted(preempted_ids)},
        ).all()
    engine.dispose()
    batch_preempted = preempted_ids & set(output)
    assert batch_preempted, (preempted_ids, list(output)[:3])
    rows = {job_id: (count, tokens) for job_id, count, tokens in usage}
    for job_id in batch_preempted:
        preempted_job = gpu.get(f"/v1/jobs/{job_id}").json()
        assert preempted_job["status"] == "succeeded" and preempted_job["attempts"] == 1
        tokens = preempted_job["usage"]["completion_tokens"]
        assert output[job_id]["response"]["body"]["usage"]["completion_tokens"] == tokens
        assert rows[job_id] == (1, tokens)
    for job_id in long_jobs:
        assert wait_job(gpu, job_id, timeout=300)["status"] == "succeeded"


def test_an_overlong_prompt_fails_alone_while_its_batch_completes(
    gpu: httpx.Client, tmp_path: Path
) -> None:
    # Given a batch with one prompt longer than the model's context (1,024 tokens)
    lines = [
        chat_line(f"s-{i}", f"Name a colour {i}.", model="smollm2", max_tokens=8) for i in range(5)
    ]
    lines.append(chat_line("long", "word " * 3000, model="smollm2", max_tokens=8))
    # When it runs
    batch = wait_batch(
        gpu, upload_and_run(gpu, write_jsonl(tmp_path / "l.jsonl", lines))["id"], timeout=300
    )
    # Then only that line fails, with a clear error, and the others complete
    assert batch["status"] == "completed"
    assert (batch["request_counts"]["completed"], batch["request_counts"]["failed"]) == (5, 1)
    (error,) = read_file(gpu, batch["error_file_id"])
    assert error["custom_id"] == "long"
    assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert "maximum context length" in error["response"]["body"]["error"]["message"]
