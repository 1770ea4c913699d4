"""The OpenAI Batch workflow through the official `openai` SDK, against real processes."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.acceptance.helpers import (
    BATCH_DONE,
    chat_line,
    read_file,
    upload_and_run,
    wait_batch,
    wait_job,
    write_jsonl,
)
from tests.conftest import SIM_PRICES
from tests.procs import poll_until


@pytest.fixture
def sdk(pipeline: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pipeline}/v1", api_key=api_key, max_retries=0)


def _thousand_lines() -> list[str]:
    lines = []
    for i in range(1000):
        text = f"Document {i}: quarterly revenue grew in region {i % 7}."
        if i % 100 == 1:
            text += " [[sim:fail=429x2]] [[sim:retry_after=0.05]]"
        if i % 100 == 2:
            text += " [[sim:fail=500x2]]"
        if i == 500:
            text += " [[sim:status=400]]"
        lines.append(chat_line(f"doc-{i}", text, max_tokens=12))
    return lines


def test_a_thousand_line_batch_through_the_openai_sdk(sdk: openai.OpenAI, tmp_path: Path) -> None:
    # Given a 1,000-line batch file with transient failures and one provider refusal
    path = write_jsonl(tmp_path / "docs.jsonl", _thousand_lines())
    # When it goes through files.create, batches.create and polling batches.retrieve
    uploaded = sdk.files.create(file=path.open("rb"), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "docs"},
    )
    batch = poll_until(
        lambda: sdk.batches.retrieve(batch.id),
        lambda b: b.status in BATCH_DONE,
        180,
        f"batch {batch.id}",
        interval=0.5,
    )
    # Then every custom_id appears exactly once across the output and error files
    assert batch.status == "completed"
    output = [json.loads(x) for x in sdk.files.content(batch.output_file_id).text.splitlines()]
    errors = [json.loads(x) for x in sdk.files.content(batch.error_file_id).text.splitlines()]
    seen = Counter(line["custom_id"] for line in output + errors)
    assert seen == Counter(f"doc-{i}" for i in range(1000))
    # And the counts match the files
    assert batch.request_counts is not None
    assert (
        batch.request_counts.total,
        batch.request_counts.completed,
        batch.request_counts.failed,
    ) == (1000, 999, 1)
    # And the refused line carries the provider's status and message
    (refused,) = errors
    assert refused["custom_id"] == "doc-500"
    assert refused["response"]["status_code"] == 400
    assert "simulated bad request" in refused["response"]["body"]["error"]["message"]
    # And usage and cost add up over the output lines
    prompt = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    completion = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    raw = sdk.batches.with_raw_response.retrieve(batch.id).http_response.json()
    assert raw["usage"]["input_tokens"] == prompt
    assert raw["usage"]["output_tokens"] == completion == 999 * 12
    expected = prompt * Decimal(SIM_PRICES["input"]) + completion * Decimal(SIM_PRICES["output"])
    assert Decimal(str(raw["cost_usd"])) == pytest.approx(expected / 1_000_000, abs=Decimal("1e-7"))


def test_transient_429_and_500_are_retried_until_they_succeed(
    client: httpx.Client, pipeline: str
) -> None:
    # Given jobs whose provider answers 429 (with Retry-After) or 500 twice first
    ids = []
    for directive in ("[[sim:fail=429x2]] [[sim:retry_after=0.1]]", "[[sim:fail=500x2]]"):
        body = {"model": "sim-gpt", "messages": [{"role": "user", "content": f"x {directive}"}]}
        ids.append(client.post("/v1/jobs", json=body).json()["id"])
    # When they run
    jobs = [wait_job(client, job_id) for job_id in ids]
    # Then both succeed, still on their first attempt: 429s and provider faults are retried
    # without spending the attempts kept for worker crashes
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1), ("succeeded", 1)]
    assert [j["served_by"] for j in jobs] == ["sim-gpt", "sim-gpt"]


def test_a_terminal_provider_error_fails_the_job_at_once(
    client: httpx.Client, pipeline: str
) -> None:
    body = {"model": "sim-claude", "messages": [{"role": "user", "content": "[[sim:status=401]]"}]}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert (job["status"], job["attempts"], job["error"]["code"]) == ("failed", 1, "provider_error")
    assert "401" in job["error"]["message"]


def test_anthropic_models_answer_in_the_chat_completion_shape(
    client: httpx.Client, pipeline: str, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            chat_line("a", "Hello there", model="sim-claude", max_tokens=5),
            json.dumps(
                {
                    "custom_id": "s",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "sim-claude",
                        "max_tokens": 5,
                        "messages": [
                            {"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello there"},
                        ],
                    },
                }
            ),
        ],
    )
    batch = wait_batch(client, upload_and_run(client, path)["id"])
    output = {line["custom_id"]: line for line in read_file(client, batch["output_file_id"])}
    body = output["a"]["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert output["s"]["response"]["body"]["choices"][0]["message"]["content"]
