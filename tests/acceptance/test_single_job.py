"""A single native job, end to end through real processes."""

from __future__ import annotations

from decimal import Decimal

import httpx

from tests.acceptance.helpers import wait_job
from tests.conftest import SIM_PRICES


def test_a_job_runs_end_to_end_with_usage_and_cost(client: httpx.Client, pipeline: str) -> None:
    # Given a chat request for a provider model
    body = {
        "model": "sim-gpt",
        "messages": [{"role": "user", "content": "Summarise: the cat sat."}],
        "max_tokens": 8,
    }
    # When it is submitted and polled
    created = client.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job = wait_job(client, created.json()["id"])
    # Then it succeeded with the provider's text, usage and the models file's price
    assert job["status"] == "succeeded", job
    assert job["result"]["content"]
    assert job["result"]["finish_reason"] == "length"
    usage = job["usage"]
    assert usage["completion_tokens"] == 8
    expected = (
        Decimal(usage["prompt_tokens"]) * Decimal(SIM_PRICES["input"])
        + Decimal(8) * Decimal(SIM_PRICES["output"])
    ) / Decimal(1_000_000)
    assert Decimal(str(job["cost_usd"])) == expected.quantize(Decimal("1e-10"))
    assert job["attempts"] == 1
