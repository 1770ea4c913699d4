"""Prometheus metrics on the processes that own them, checked against the job rows."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from promptq.db import create_sync_engine
from tests.acceptance.helpers import chat_line, upload_and_run, wait_batch, write_jsonl
from tests.stack import Stack

METRICS_TOKEN = "metrics-test-token"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = METRICS_TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def family(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture(scope="module")
def metrics_api(stack: Stack) -> str:
    """An API whose /metrics needs a token and reads the cluster on every scrape."""
    return stack.api({"PROMPTQ_METRICS_TOKEN": METRICS_TOKEN, "PROMPTQ_METRICS_CACHE_SECONDS": "0"})


def test_api_metrics_need_the_token_when_one_is_set(metrics_api: str) -> None:
    # Given an API started with PROMPTQ_METRICS_TOKEN
    # When /metrics is scraped without it, or with a wrong one
    bare = httpx.get(f"{metrics_api}/metrics", timeout=10)
    wrong = httpx.get(
        f"{metrics_api}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10
    )
    # Then both are refused, and the right token is let in
    assert (bare.status_code, wrong.status_code) == (401, 401)
    assert (
        "promptq_jobs"
        in httpx.get(
            f"{metrics_api}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=10,
        ).text
    )


def test_api_metrics_count_the_job_and_batch_rows_after_a_batch(
    client: httpx.Client, pipeline: str, metrics_api: str, pg_url: str, tmp_path: Path
) -> None:
    # Given a finished batch of 40 lines, 3 of them refused by the provider
    lines = [
        chat_line(f"m-{i}", f"Doc {i}" + (" [[sim:status=400]]" if i % 13 == 5 else ""))
        for i in range(40)
    ]
    batch = upload_and_run(client, write_jsonl(tmp_path / "in.jsonl", lines))
    assert wait_batch(client, batch["id"])["status"] == "completed"
    # When the API's /metrics is scraped
    samples = scrape(f"{metrics_api}/metrics")
    # Then jobs per status and model, and batches per status, equal the rows
    engine = create_sync_engine(pg_url)
    with engine.connect() as conn:
        jobs = conn.execute(sa.text("SELECT status, model, count(*) FROM jobs GROUP BY 1, 2"))
        batches = conn.execute(sa.text("SELECT status, count(*) FROM batches GROUP BY 1"))
        queued = conn.execute(
            sa.text(
                "SELECT queue, priority, count(*) FROM jobs WHERE status = 'queued' GROUP BY 1, 2"
            )
        )
        job_rows = {(("model", m or ""), ("status", s)): float(n) for s, m, n in jobs}
        batch_rows = {(("status", s),): float(n) for s, n in batches}
        depth_rows = {(("priority", str(p)), ("queue", q)): float(n) for q, p, n in queued}
    engine.dispose()
    assert family(samples, "promptq_jobs") == job_rows
    assert family(samples, "promptq_batches") == batch_rows
    assert job_rows[(("model", "sim-gpt"), ("status", "failed"))] >= 3
    # And the queue depth per queue and priority equals the queued rows
    assert family(samples, "promptq_queue_depth") == depth_rows
