"""Cancelling (a batch keeps its finished results; a running job ends at once and its
webhook is told); listing pages through batches; readiness; expiry; retry."""

from __future__ import annotations

from pathlib import Path

import httpx
from standardwebhooks import Webhook

from tests.acceptance.helpers import (
    chat_line,
    read_file,
    upload_and_run,
    wait_batch,
    wait_job,
    write_jsonl,
)
from tests.conftest import make_key
from tests.procs import poll_until
from tests.webhook_receiver import receiver


def test_cancel_keeps_finished_results(client: httpx.Client, pipeline: str, tmp_path: Path) -> None:
    # Given a batch of slow lines, some of which have finished
    lines = [chat_line(f"c-{i}", f"slow {i} [[sim:sleep=0.4]]") for i in range(400)]
    batch = upload_and_run(client, write_jsonl(tmp_path / "slow.jsonl", lines))
    poll_until(
        lambda: client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"],
        lambda completed: completed >= 20,
        60,
        "20 finished lines",
    )
    # When it is cancelled
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] in ("cancelling", "cancelled")
    final = wait_batch(client, batch["id"])
    # Then the finished lines keep their results and the rest end batch_cancelled
    assert final["status"] == "cancelled"
    counts = final["request_counts"]
    assert counts["completed"] >= 20 and counts["cancelled"] > 0
    assert counts["completed"] + counts["cancelled"] == 400
    output = read_file(client, final["output_file_id"])
    errors = read_file(client, final["error_file_id"])
    assert len(output) == counts["completed"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert len({x["custom_id"] for x in output + errors}) == 400


def test_cancelling_a_running_job_ends_it_at_once_and_announces_it(
    client: httpx.Client, pipeline: str, webhook_secret: str
) -> None:
    # Given a running job, which its provider takes 10 s to answer, with a webhook
    with receiver() as hooks:
        body = {
            "model": "sim-gpt",
            "messages": [{"role": "user", "content": "slow [[sim:sleep=10]]"}],
            "webhook_url": f"{hooks.url}/cancelled",
        }
        job = client.post("/v1/jobs", json=body).json()
        wait_job(client, job["id"], until=("running",))
        # When it is cancelled
        cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
        # Then it is cancelled at once, says why, and its webhook is told
        assert (cancelled["status"], cancelled["error"]["code"]) == ("cancelled", "job_cancelled")
        (delivery,) = hooks.wait("/cancelled", 1)
    event = Webhook(webhook_secret).verify(delivery.body, delivery.headers)
    assert (event["type"], event["data"]["id"]) == ("job.cancelled", job["id"])
    assert event["data"]["status"] == "cancelled"
    # And cancelling it again changes nothing
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json() == cancelled


def test_batches_list_newest_first_in_pages(
    client: httpx.Client, pipeline: str, tmp_path: Path
) -> None:
    made = [
        upload_and_run(client, write_jsonl(tmp_path / f"{i}.jsonl", [chat_line("a", "b")]))["id"]
        for i in range(3)
    ]
    first = client.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == made[::-1][:2] and first["has_more"]
    second = client.get("/v1/batches", params={"limit": 2, "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == made[0]


def test_another_tenants_objects_are_not_found(
    client: httpx.Client, api_url: str, pg_url: str, tmp_path: Path
) -> None:
    batch = upload_and_run(client, write_jsonl(tmp_path / "t.jsonl", [chat_line("a", "b")]))
    other = httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {make_key(pg_url, 'someone-else')}"}
    )
    assert other.get(f"/v1/batches/{batch['id']}").status_code == 404
    assert other.get(f"/v1/files/{batch['input_file_id']}").status_code == 404
    assert batch["id"] not in [b["id"] for b in other.get("/v1/batches").json()["data"]]
    other.close()


def test_models_and_readiness(client: httpx.Client, api_url: str) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["sim-gpt"]["backend"] == "openai"
    assert models["sim-gpt"]["input_per_mtok"] == 0.15
    ready = httpx.get(f"{api_url}/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"


def test_an_expired_batch_keeps_finished_results_and_expires_the_rest(
    client: httpx.Client, pipeline: str, tmp_path: Path
) -> None:
    # Given a batch of slow lines with a 3-second completion window
    lines = [chat_line(f"e-{i}", f"slow {i} [[sim:sleep=0.5]]") for i in range(600)]
    batch = upload_and_run(
        client, write_jsonl(tmp_path / "exp.jsonl", lines), completion_window="3s"
    )
    # When the window passes
    final = wait_batch(client, batch["id"], timeout=60)
    # Then it is expired, finished lines keep their results, the rest end batch_expired
    assert final["status"] == "expired" and final["expired_at"]
    counts = final["request_counts"]
    assert counts["completed"] > 0 and counts["expired"] > 0
    assert counts["completed"] + counts["expired"] == 600
    output = read_file(client, final["output_file_id"])
    errors = read_file(client, final["error_file_id"])
    assert len(output) == counts["completed"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert len({x["custom_id"] for x in output + errors}) == 600


def test_retry_reruns_only_the_failed_lines_as_a_linked_batch(
    client: httpx.Client, pipeline: str, tmp_path: Path
) -> None:
    # Given a finished batch where one line failed on every attempt (4 x 500)
    lines = [chat_line(f"r-{i}", f"fine {i}") for i in range(3)]
    lines.append(chat_line("flaky", "flaky [[sim:fail=500x4]]"))
    first = wait_batch(
        client, upload_and_run(client, write_jsonl(tmp_path / "r.jsonl", lines))["id"]
    )
    assert first["request_counts"]["failed"] == 1
    # When it is retried
    retried = client.post(f"/v1/batches/{first['id']}/retry")
    assert retried.status_code == 200, retried.text
    second = wait_batch(client, retried.json()["id"])
    # Then the new batch re-ran just that line, now successfully, and names its origin
    assert second["retry_of"] == first["id"]
    assert second["request_counts"]["total"] == 1
    assert [x["custom_id"] for x in read_file(client, second["output_file_id"])] == ["flaky"]
    # And a batch with nothing to re-run says so
    again = client.post(f"/v1/batches/{second['id']}/retry")
    assert (again.status_code, again.json()["error"]["code"]) == (400, "nothing_to_retry")
