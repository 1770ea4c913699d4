"""Cost control end to end, with real services and two remote workers: hard budgets, the
usage endpoint, the exact response cache with single flight, and cost-aware routing.
The deployment has its own database, Redis, simulated providers and models file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from promptq.db import create_sync_engine
from tests.acceptance.helpers import chat_line, read_file, upload_and_run, wait_batch, write_jsonl
from tests.conftest import SIM_KEY, stack_env
from tests.procs import Child, free_port, wait_http
from tests.stack import RedisServer, Stack, create_database, drop_database, make_key

PRICES = {"input": Decimal("0.15"), "output": Decimal("0.60")}


def _sim(name: str, log_dir: Path, *args: str) -> tuple[Child, str]:
    port = free_port()
    child = Child.promptq(
        name, ["sim-provider", "--port", str(port), "--api-key", SIM_KEY, *args], {}, log_dir
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models")
    return child, url


def _models(main: str, verbose: str) -> str:
    model = """
[[models]]
name = "{name}"
backend = "openai"
base_url = "{url}/v1"
api_key_env = "SIM_PROVIDER_KEY"
input_per_mtok = 0.15
output_per_mtok = 0.60
{extra}
"""
    return "\n".join(
        [
            model.format(name="metered", url=main, extra=""),
            model.format(name="cached", url=main, extra='cache = "exact"'),
            # The small model talks at length (its provider writes 100 tokens), the large one
            # briefly: a small answer cut off at max_tokens escalates to the large one.
            model.format(name="small", url=verbose, extra="max_model_len = 120"),
            model.format(name="large", url=main, extra="max_model_len = 100000").replace(
                "0.60", "6.0"
            ),
            f"""
[[models]]
name = "self-hosted"
backend = "openai"
base_url = "{main}/v1"
api_key_env = "SIM_PROVIDER_KEY"

[[routers]]
name = "auto"
candidates = ["small", "large"]
strategy = "cheapest_fit"
escalate_on = ["length", "error"]
""",
        ]
    )


@dataclass
class Deployment:
    stack: Stack
    pg_url: str
    api: str
    sim: str
    env: dict[str, str]

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def rows(self, sql: str, **params: Any) -> list[Any]:
        engine = create_sync_engine(self.pg_url)
        with engine.connect() as conn:
            rows = list(conn.execute(sa.text(sql), params))
        engine.dispose()
        return rows

    def upstream_calls(self) -> int:
        stats = httpx.get(f"{self.sim}/_sim/stats").json()
        return int(stats["by_endpoint"].get("/v1/chat/completions", 0))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "promptq", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )


@pytest.fixture(scope="module")
def deployment(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("cost")
    sims = [_sim("sim-cost", log_dir), _sim("sim-verbose", log_dir, "--output-tokens", "100")]
    models = home / "models.toml"
    models.write_text(_models(sims[0][1], sims[1][1]))
    pg_url = create_database("promptq_cost")
    redis_server = RedisServer(log_dir)
    env = stack_env(pg_url, redis_server.url, models, home)
    stack = Stack(env, log_dir)
    try:
        api = stack.api()
        stack.scheduler()
        stack.worker()
        stack.worker()  # several workers share budgets and the cache
        yield Deployment(stack, pg_url, api, sims[0][1], env)
    finally:
        stack.stop()
        redis_server.stop()
        drop_database(pg_url)
        for child, _ in sims:
            child.stop()


def _run(client: httpx.Client, path: Path, lines: list[str], **extra: Any) -> dict[str, Any]:
    batch = upload_and_run(client, write_jsonl(path, lines), **extra)
    return wait_batch(client, batch["id"], timeout=180)


def _job(client: httpx.Client, **body: Any) -> dict[str, Any]:
    created = client.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    for _ in range(600):
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def _ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def test_a_budget_is_never_exceeded_and_then_refuses_with_402(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a key with a budget for about 100 of these lines, and a 250-line batch
    key = make_key(deployment.pg_url, "budgeted", tenant="budget-tenant")
    key_id = deployment.rows("SELECT id FROM api_keys WHERE name = 'budgeted'")[0][0]
    per_line = (10 * PRICES["input"] + 16 * PRICES["output"]) / 1_000_000
    budget = (per_line * 100).quantize(Decimal("1e-10"))
    deployment.cli("keys", "budget", key_id, "--budget-usd", str(budget), "--budget-period", "day")
    lines = [
        chat_line(f"b-{i}", f"budget line number {i} please answer", "metered", max_tokens=16)
        for i in range(250)
    ]

    # When the batch runs on two workers
    with deployment.client(key) as client:
        batch = _run(client, tmp_path / "budget.jsonl", lines)

        # Then the spend is at most the budget and at least 90% of it, exactly the jobs' sum
        spent = deployment.rows(
            "SELECT coalesce(sum(cost_usd), 0) FROM jobs WHERE batch_id = :b", b=batch["id"]
        )[0][0]
        assert budget * Decimal("0.9") <= spent <= budget
        counts = batch["request_counts"]
        assert counts["completed"] + counts["failed"] == 250 and counts["failed"] > 0
        errors = read_file(client, batch["error_file_id"])
        assert {e["error"]["code"] for e in errors} == {"budget_exceeded"}
        ledger = deployment.rows(
            "SELECT spent_usd, reserved_usd FROM budgets WHERE api_key_id = :k", k=key_id
        )[0]
        assert ledger == (spent, 0)

        # And /v1/usage agrees with the jobs
        usage = client.get("/v1/usage").json()
        assert Decimal(str(usage["spend_usd"])) == pytest.approx(spent, abs=Decimal("1e-12"))
        assert usage["budget_usd"] == float(budget) and usage["budget_period"] == "day"
        assert usage["by_model"][0]["model"] == "metered"
        assert usage["by_model"][0]["requests"] == counts["completed"]

        # And the next job is refused with 402 budget_exceeded, and the next batch fails
        # with it once its lines are read (the cheapest does not fit)
        refused = client.post(
            "/v1/jobs", json={"model": "metered", **_ask("one more", max_tokens=16)}
        )
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        more = write_jsonl(tmp_path / "more.jsonl", lines[:3])
        with more.open("rb") as fh:
            file_id = client.post(
                "/v1/files", files={"file": ("m.jsonl", fh)}, data={"purpose": "batch"}
            ).json()["id"]
        batch_body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        again = client.post("/v1/batches", json=batch_body)
        assert again.status_code == 200 and again.json()["status"] == "validating"
        failed = wait_batch(client, again.json()["id"])
        assert failed["status"] == "failed" and failed["request_counts"]["total"] == 0
        assert [e["code"] for e in failed["errors"]["data"]] == ["budget_exceeded"]

        # And a self-hosted model priced at zero still runs
        assert _job(client, model="self-hosted", **_ask("free"))["status"] == "succeeded"

        # And once the budget has nothing left, a batch is refused at once with 402
        deployment.cli("keys", "budget", key_id, "--budget-usd", str(spent / 2))
        exhausted = client.post("/v1/batches", json=batch_body)
        assert exhausted.status_code == 402, exhausted.text
        assert exhausted.json()["error"]["code"] == "budget_exceeded"

        # And after the budget is raised, the retry endpoint re-runs the refused lines
        deployment.cli("keys", "budget", key_id, "--budget-usd", str(budget * 4))
        retried = client.post(f"/v1/batches/{batch['id']}/retry")
        assert retried.status_code == 200, retried.text
        rerun = wait_batch(client, retried.json()["id"], timeout=180)
        assert rerun["request_counts"]["completed"] == counts["failed"]


def test_duplicates_make_one_upstream_call_each_and_a_rerun_makes_none(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a 60-line batch holding 20 distinct prompts, on a model with the exact cache
    key = make_key(deployment.pg_url, "cache-user", tenant="cache-tenant")
    lines = [chat_line(f"c-{i}", f"distinct prompt {i % 20}", "cached") for i in range(60)]
    before = deployment.upstream_calls()

    with deployment.client(key) as client:
        # When it runs on two workers
        first = _run(client, tmp_path / "cache.jsonl", lines)

        # Then the provider was asked at most once per distinct prompt
        assert first["request_counts"]["completed"] == 60
        calls = deployment.upstream_calls() - before
        assert calls <= 20
        output = read_file(client, first["output_file_id"])
        hits = [line for line in output if line["response"]["body"]["promptq"]["cached"]]
        assert len(hits) == 60 - calls
        assert first["cost_usd"] > 0

        # When the same file runs again
        second = _run(client, tmp_path / "cache.jsonl", lines)

        # Then nothing goes upstream, nothing is billed, every line says it was cached
        assert deployment.upstream_calls() - before == calls
        assert second["request_counts"]["completed"] == 60
        assert second["cost_usd"] == 0
        rerun = read_file(client, second["output_file_id"])
        assert all(line["response"]["body"]["promptq"]["cached"] for line in rerun)
        same = {o["custom_id"]: o["response"]["body"]["choices"] for o in output}
        assert all(same[o["custom_id"]] == o["response"]["body"]["choices"] for o in rerun)

        # And /v1/usage counts the cached requests and what they saved
        usage = client.get("/v1/usage").json()
        (row,) = usage["by_model"]
        assert row["requests"] == 120 and row["cached_requests"] == 120 - calls
        assert row["saved_usd"] > 0
        assert usage["spend_usd"] == pytest.approx(first["cost_usd"])

        # And an admin key sees the same for that key or its tenant; others may not ask
        key_id = deployment.rows("SELECT id FROM api_keys WHERE name = 'cache-user'")[0][0]
        refused = client.get("/v1/usage", params={"tenant": "other-tenant"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        admin = make_key(deployment.pg_url, "cost-admin", tenant="ops", admin=True)
        with deployment.client(admin) as ops:
            assert ops.get("/v1/usage", params={"api_key_id": key_id}).json() == usage
            by_tenant = ops.get("/v1/usage", params={"tenant": "cache-tenant"}).json()
            assert by_tenant["by_model"] == usage["by_model"]

        # And a job that opts out goes upstream even though the answer is cached
        opted = _job(client, model="cached", cache=False, **_ask("distinct prompt 3"))
        assert opted["cached"] is False
        assert deployment.upstream_calls() - before == calls + 1

    # And another tenant's identical request is not served from this tenant's cache
    stranger = make_key(deployment.pg_url, "stranger", tenant="other-tenant")
    with deployment.client(stranger) as client:
        theirs = _job(client, model="cached", **_ask("distinct prompt 3"))
    assert theirs["status"] == "succeeded" and theirs["cached"] is False
    assert theirs["cost_usd"] > 0
    assert deployment.upstream_calls() - before == calls + 2


def test_auto_routes_by_size_and_escalates_a_cut_off_answer(deployment: Deployment) -> None:
    key = make_key(deployment.pg_url, "router-user", tenant="router-tenant")
    with deployment.client(key) as client:
        # A short prompt whose answer fits goes to the small model
        short = _job(client, model="auto", **_ask("short question", max_tokens=100))
        assert short["status"] == "succeeded"
        served = deployment.rows("SELECT response FROM jobs WHERE id = :j", j=short["id"])[0][0]
        assert served["promptq"]["served_by"] == "small"
        assert "escalated_from" not in served["promptq"]

        # A long prompt does not fit the small model's window: the large one serves it
        long = _job(client, model="auto", **_ask("word " * 200, max_tokens=20))
        served = deployment.rows("SELECT response FROM jobs WHERE id = :j", j=long["id"])[0][0]
        assert served["promptq"]["served_by"] == "large"

        # A short prompt whose small answer is cut off at max_tokens escalates
        cut = _job(client, model="auto", **_ask("tell me a long story", max_tokens=40))
        assert cut["status"] == "succeeded" and cut["result"]["finish_reason"] == "stop"
        served = deployment.rows("SELECT response FROM jobs WHERE id = :j", j=cut["id"])[0][0]
        assert served["promptq"]["served_by"] == "large"
        assert served["promptq"]["escalated_from"] == ["small"]
        # It paid for both answers: 40 cut-off tokens on small, 16 on large
        assert cut["usage"]["completion_tokens"] == 56

        # A task no candidate is tagged for is refused at once
        refused = client.post(
            "/v1/jobs", json={"model": "auto", "metadata": {"task": "translate"}, **_ask("x")}
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_model_fits"


def test_estimate_and_max_cost(deployment: Deployment, tmp_path: Path) -> None:
    key = make_key(deployment.pg_url, "estimator", tenant="estimate-tenant")
    lines = [chat_line(f"e-{i}", f"estimate me {i}", "metered", max_tokens=10) for i in range(30)]
    path = write_jsonl(tmp_path / "estimate.jsonl", lines)
    printed = deployment.cli("estimate", str(path)).stdout
    assert "metered" in printed and "30" in printed
    with deployment.client(key) as client:
        batch = upload_and_run(client, path)
        estimate = batch["estimated_cost_usd"]
        assert estimate > 0
        done = wait_batch(client, batch["id"], timeout=120)
        assert 0 < done["cost_usd"] <= estimate
        with path.open("rb") as fh:
            file_id = client.post(
                "/v1/files", files={"file": ("e.jsonl", fh)}, data={"purpose": "batch"}
            ).json()["id"]
        capped = client.post(
            "/v1/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "max_cost_usd": estimate / 2,
            },
        )
        assert capped.status_code == 200, capped.text
        refused_batch = wait_batch(client, capped.json()["id"])
        assert refused_batch["status"] == "failed"
        assert refused_batch["request_counts"]["total"] == 0  # nothing ran
        assert [e["code"] for e in refused_batch["errors"]["data"]] == ["estimate_too_high"]
    refused = deployment.cli(
        "submit",
        str(path),
        "--api-url",
        deployment.api,
        "--api-key",
        key,
        "--max-cost-usd",
        str(estimate / 2),
        check=False,
    )
    assert refused.returncode != 0 and "estimate_too_high" in refused.stderr
