"""Prometheus metrics on the processes that own them, checked against the job rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from promptq.db import create_sync_engine
from tests.acceptance.helpers import chat_line, upload_and_run, wait_batch, write_jsonl
from tests.acceptance.ops_stack import private_stack
from tests.procs import free_port, wait_http
from tests.stack import Stack, make_key

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


@dataclass
class Measured:
    """A private deployment after one known batch: its client and its processes' metrics."""

    client: httpx.Client
    pg_url: str
    batch_id: str
    worker_metrics: str
    scheduler_metrics: str


@pytest.fixture(scope="module")
def measured(
    log_dir: Path, tmp_path_factory: pytest.TempPathFactory, sim_url: str
) -> Iterator[Measured]:
    """A batch of 30 lines (3 refused by the provider, 3 rate limited once) run by the only
    worker of a deployment of its own."""
    home = tmp_path_factory.mktemp("measured")
    with private_stack(log_dir, home, sim_url) as stack:
        worker_port, scheduler_port = free_port(), free_port()
        api_url = stack.api()
        stack.worker("--metrics-port", str(worker_port))
        stack._start("scheduler", ["scheduler", "--metrics-port", str(scheduler_port)])
        pg_url = stack.env["PROMPTQ_DATABASE_URL"]
        key = make_key(pg_url, "measured")
        client = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        lines = []
        for i in range(30):
            text = f"Measured document {i}."
            if i % 10 == 3:
                text += " [[sim:status=400]]"
            if i % 10 == 5:
                text += " [[sim:fail=429x1]] [[sim:retry_after=0.05]]"
            lines.append(chat_line(f"m-{i}", text, max_tokens=6))
        batch = upload_and_run(client, write_jsonl(home / "in.jsonl", lines))
        assert wait_batch(client, batch["id"])["status"] == "completed"
        wait_http(f"http://127.0.0.1:{scheduler_port}/metrics")
        yield Measured(
            client,
            pg_url,
            batch["id"],
            f"http://127.0.0.1:{worker_port}/metrics",
            f"http://127.0.0.1:{scheduler_port}/metrics",
        )
        client.close()


def _rows(pg_url: str, sql: str) -> list[sa.Row[tuple[object, ...]]]:
    engine = create_sync_engine(pg_url)
    with engine.connect() as conn:
        rows = list(conn.execute(sa.text(sql)))
    engine.dispose()
    return rows


def test_worker_metrics_equal_the_job_rows(measured: Measured) -> None:
    # Given the batch above, finished
    # When the worker's /metrics is scraped
    samples = scrape(measured.worker_metrics, token=None)
    # Then jobs finished per outcome and code are the job rows
    finished = family(samples, "promptq_jobs_finished_total")
    rows = _rows(
        measured.pg_url,
        "SELECT status, coalesce(error_code, ''), count(*) FROM jobs GROUP BY 1, 2",
    )
    expected = {
        (("code", code), ("model", "sim-gpt"), ("outcome", status)): float(n)
        for status, code, n in rows
    }
    assert finished == expected
    assert sum(finished.values()) == 30
    # And tokens and cost are the sums over the jobs
    ((prompt, completion, cost),) = _rows(
        measured.pg_url,
        "SELECT sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM jobs",
    )
    tokens = family(samples, "promptq_tokens_total")
    assert tokens[(("kind", "prompt"), ("model", "sim-gpt"))] == prompt
    assert tokens[(("kind", "completion"), ("model", "sim-gpt"))] == completion == 27 * 6
    spent = family(samples, "promptq_cost_usd_total")[(("model", "sim-gpt"),)]
    assert Decimal(str(spent)) == pytest.approx(Decimal(str(cost)), abs=Decimal("1e-9"))
    # And every provider answer is counted by outcome: 27 ok, 3 refused, 3 rate limited
    requests = family(samples, "promptq_provider_requests_total")
    by_outcome = {dict(labels)["outcome"]: n for labels, n in requests.items()}
    assert by_outcome == {"ok": 27, "terminal_error": 3, "rate_limited": 3}
    assert {dict(labels)["deployment"] for labels in requests} == {"gpt-sim"}
    # And the histograms saw every job once, and nothing is in flight
    assert family(samples, "promptq_job_duration_seconds_count") == {(("model", "sim-gpt"),): 30.0}
    assert family(samples, "promptq_job_queue_wait_seconds_count") == {
        (("model", "sim-gpt"),): 30.0
    }
    assert family(samples, "promptq_in_flight") == {(("model", "sim-gpt"),): 0.0}


def test_the_scheduler_serves_its_metrics(measured: Measured) -> None:
    # Given the scheduler started with --metrics-port
    # When its /metrics is scraped
    text = httpx.get(measured.scheduler_metrics, timeout=10).text
    # Then retention's counter is declared there
    assert "# TYPE promptq_purged_rows_total counter" in text
    # And the sweeper's counts: nothing died, so no lease was requeued or failed, and no
    # batch expired; the batch was finalized once, by the worker or the sweeper
    samples = scrape(measured.scheduler_metrics, token=None)
    actions = {
        dict(labels)["action"]: n
        for labels, n in family(samples, "promptq_sweeper_actions_total").items()
    }
    assert actions["requeued"] == actions["failed"] == actions["expired_batches"] == 0
    assert actions["finalized_batches"] in (0, 1)
    assert set(actions) >= {"published", "validations_resumed"}
    # And the relay's deliveries (none: the batch has no webhook)
    deliveries = family(samples, "promptq_webhook_deliveries_total")
    assert {dict(labels)["outcome"]: n for labels, n in deliveries.items()} == {
        "delivered": 0,
        "retry": 0,
        "failed": 0,
    }
