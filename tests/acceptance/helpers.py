"""Shared steps of the acceptance tests: make batch files, poll, read result files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from tests.procs import poll_until

#: A job or a batch in one of these states will not change again.
JOB_DONE = ("succeeded", "failed", "cancelled", "expired")
BATCH_DONE = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, text: str, model: str = "sim-gpt", **body: Any) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
        }
    )


def write_jsonl(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def wait_batch(
    client: httpx.Client,
    batch_id: str,
    timeout: float = 120,
    until: tuple[str, ...] = BATCH_DONE,
) -> dict[str, Any]:
    """The batch once its status is one of `until` (by default: once it ended)."""
    batch: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/batches/{batch_id}").json(),
        lambda b: b["status"] in until,
        timeout,
        f"batch {batch_id}",
        interval=0.1,
    )
    return batch


def wait_job(
    client: httpx.Client, job_id: str, timeout: float = 60, until: tuple[str, ...] = JOB_DONE
) -> dict[str, Any]:
    """The job once its status is one of `until` (by default: once it ended)."""
    job: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/jobs/{job_id}").json(),
        lambda j: j["status"] in until,
        timeout,
        f"job {job_id}",
        interval=0.1,
    )
    return job


def read_file(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def upload_and_run(client: httpx.Client, path: Path, **extra: Any) -> dict[str, Any]:
    with path.open("rb") as fh:
        uploaded = client.post(
            "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "batch"}
        )
    assert uploaded.status_code == 200, uploaded.text
    created = client.post(
        "/v1/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **extra,
        },
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "validating"  # its lines are checked after the answer
    return wait_validated(client, created.json()["id"])


def wait_validated(client: httpx.Client, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    """The batch once its lines are stored as jobs (no longer `validating`)."""
    batch: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/batches/{batch_id}").json(),
        lambda b: b["status"] != "validating",
        timeout,
        f"batch {batch_id} validated",
        interval=0.05,
    )
    return batch
