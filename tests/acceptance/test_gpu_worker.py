"""The GPU worker on vLLM (the CPU build here) with the small real model: real engine,
real tokens, priorities inside the engine, a prompt too long failing alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.helpers import (
    chat_line,
    read_file,
    upload_and_run,
    wait_batch,
    wait_job,
    write_jsonl,
)
from tests.conftest import stack_env
from tests.procs import wait_for
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


@pytest.fixture(scope="module")
def gpu(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
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
        worker = stack._start("gpu-worker", ["worker", "gpu", "--model", "smollm2"])
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
            yield client
    finally:
        stack.stop()
        redis_server.stop()
        drop_database(pg_url)


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
