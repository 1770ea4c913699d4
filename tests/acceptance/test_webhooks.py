"""Webhooks end to end: a job or batch that finishes is announced once, signed in the
Standard Webhooks format, retried under the same webhook-id, never sent to internal
addresses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from promptq.db import create_sync_engine
from promptq.models import WebhookEvent
from tests.acceptance.helpers import chat_line, upload_and_run, wait_batch, write_jsonl
from tests.procs import poll_until
from tests.webhook_receiver import Receiver, receiver


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


def _job(text: str, webhook_url: str) -> dict[str, object]:
    return {
        "model": "sim-gpt",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 4,
        "webhook_url": webhook_url,
    }


def _events(pg_url: str, about: str) -> list[dict[str, Any]]:
    """The outbox rows of the events about one job or batch."""
    engine = create_sync_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(WebhookEvent.id, WebhookEvent.status, WebhookEvent.attempts).where(
                    WebhookEvent.payload["data"]["id"].as_string() == about
                )
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def _delivered(pg_url: str, event_id: str) -> dict[str, Any]:
    """The outbox row of an event, once it is delivered."""

    def fetch() -> dict[str, Any]:
        engine = create_sync_engine(pg_url)
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    sa.select(WebhookEvent.status, WebhookEvent.attempts).where(
                        WebhookEvent.id == event_id
                    )
                ).one()
                return dict(row._mapping)
        finally:
            engine.dispose()

    row: dict[str, Any] = poll_until(
        fetch, lambda r: r["status"] == "delivered", 30, f"event {event_id} delivered"
    )
    return row


def test_a_job_webhook_is_retried_under_one_id_until_the_receiver_accepts_it(
    client: httpx.Client, pipeline: str, pg_url: str, webhook_secret: str
) -> None:
    # Given a receiver that answers 500 three times, then 200
    with receiver(fail_first=3) as hooks:
        # When a job with a webhook_url succeeds
        job = client.post("/v1/jobs", json=_job("Say hi.", f"{hooks.url}/jobs")).json()
        first = hooks.wait("/jobs", 4)[0]
        # Once its outbox row says delivered, the relay never sends it again
        row = _delivered(pg_url, first.headers["webhook-id"])
        attempts = hooks.for_path("/jobs")
    assert row["attempts"] == 4
    # Then it saw four attempts of one event, each signed, the last one accepted
    assert [a.answered for a in attempts] == [500, 500, 500, 200]
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert attempts[0].headers["webhook-id"].startswith("msg_")
    for attempt in attempts:
        event = Webhook(webhook_secret).verify(attempt.body, attempt.headers)
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job["id"]
        assert event["data"]["status"] == "succeeded"
        assert event["data"]["result"]["content"]
    assert attempts[0].headers["content-type"] == "application/json"


def test_a_failed_job_sends_job_failed(
    client: httpx.Client, pipeline: str, webhook_secret: str, hooks: Receiver
) -> None:
    job = client.post("/v1/jobs", json=_job("No. [[sim:status=400]]", f"{hooks.url}/f")).json()
    (delivery,) = hooks.wait("/f", 1)
    event = Webhook(webhook_secret).verify(delivery.body, delivery.headers)
    assert (event["type"], event["data"]["id"]) == ("job.failed", job["id"])
    assert event["data"]["error"]["code"]


def test_a_batch_sends_one_completed_event_with_its_counts(
    client: httpx.Client,
    pipeline: str,
    hooks: Receiver,
    tmp_path: Path,
    pg_url: str,
    webhook_secret: str,
) -> None:
    # Given a batch of three lines, one of them invalid, with a webhook_url
    lines = [chat_line("a", "one"), chat_line("b", "two"), "{not json"]
    path = write_jsonl(tmp_path / "hooked.jsonl", lines)
    # When it completes
    batch = upload_and_run(client, path, webhook_url=f"{hooks.url}/batch")
    assert wait_batch(client, batch["id"])["status"] == "completed"
    hooks.wait("/batch", 1)
    # Then the batch has exactly one event (none per line; a finalized batch is never
    # finalized again), delivered once, with the batch and its counts
    (row,) = _events(pg_url, batch["id"])
    _delivered(pg_url, row["id"])
    (delivery,) = hooks.for_path("/batch")
    event = Webhook(webhook_secret).verify(delivery.body, delivery.headers)
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch["id"]
    assert event["data"]["status"] == "completed"
    assert event["data"]["request_counts"] == {
        "total": 3,
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
        "expired": 0,
    }
    assert json.loads(delivery.body)["timestamp"].endswith("Z")


def test_a_batch_with_no_valid_line_sends_batch_failed(
    client: httpx.Client, pipeline: str, webhook_secret: str, hooks: Receiver, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"custom_id": "x"}'])
    batch = upload_and_run(client, path, webhook_url=f"{hooks.url}/failed")
    assert batch["status"] == "failed"
    (delivery,) = hooks.wait("/failed", 1)
    event = Webhook(webhook_secret).verify(delivery.body, delivery.headers)
    assert (event["type"], event["data"]["id"]) == ("batch.failed", batch["id"])


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
    ],
)
def test_webhook_urls_to_internal_addresses_are_refused(
    client: httpx.Client, url: str, tmp_path: Path
) -> None:
    # A job and a batch naming an internal address get 400 invalid_webhook_url
    job = client.post("/v1/jobs", json=_job("hi", url))
    assert job.status_code == 400, job.text
    assert job.json()["error"]["code"] == "invalid_webhook_url"
    assert job.json()["error"]["message"]
    with write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")]).open("rb") as fh:
        file_id = client.post(
            "/v1/files", files={"file": ("in.jsonl", fh)}, data={"purpose": "batch"}
        ).json()["id"]
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "webhook_url": url,
    }
    batch = client.post("/v1/batches", json=body)
    assert batch.status_code == 400, batch.text
    assert batch.json()["error"]["code"] == "invalid_webhook_url"
