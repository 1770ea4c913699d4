"""Validation before storage: a field past its limit fails its own line (or request) with a
stable code, never the whole upload; batch lines get the checks of `POST /v1/jobs`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.acceptance.helpers import chat_line, read_file, upload_and_run, wait_batch, write_jsonl


def test_over_long_and_out_of_range_fields_fail_their_line_only(
    client: httpx.Client, pipeline: str, tmp_path: Path
) -> None:
    # Given a file with two good lines and one bad field on each of five others
    lines = [
        chat_line("good-1", "one"),
        chat_line("c" * 600, "a 600-character custom_id"),
        chat_line("long-model", "a 300-character model", model="m" * 300),
        chat_line("hot", "temperature 99", temperature=99),
        chat_line("urgent", "priority -7", priority=-7),
        chat_line("tagged", "17 metadata keys", metadata={f"k{i}": "v" for i in range(17)}),
        chat_line("good-2", "two"),
    ]
    # When it is uploaded and run
    batch = upload_and_run(client, write_jsonl(tmp_path / "limits.jsonl", lines))
    done = wait_batch(client, batch["id"])
    # Then the upload was accepted, the good lines ran, each bad one failed with its code
    assert done["status"] == "completed"
    assert done["request_counts"]["completed"] == 2
    assert done["request_counts"]["failed"] == 5
    errors = read_file(client, done["error_file_id"])
    by_code = sorted((e["error"]["code"], e["custom_id"]) for e in errors)
    assert by_code == [
        ("custom_id_too_long", None),
        ("invalid_body", "hot"),
        ("invalid_body", "tagged"),
        ("invalid_body", "urgent"),
        ("model_too_long", "long-model"),
    ]
    messages = {e["custom_id"]: e["error"]["message"] for e in errors}
    assert "body.temperature" in messages["hot"] and "body.priority" in messages["urgent"]


def test_a_line_over_the_size_limit_fails_alone(
    client: httpx.Client, pipeline: str, tmp_path: Path
) -> None:
    # Given a line of 9 MB (over the 8 MiB default) between two good ones
    huge = chat_line("huge", "x" * 9_000_000)
    path = write_jsonl(tmp_path / "huge.jsonl", [chat_line("a", "one"), huge, chat_line("b", "2")])
    # When it is run
    done = wait_batch(client, upload_and_run(client, path)["id"])
    # Then only that line failed, as line_too_long, with its custom_id
    assert done["request_counts"] == {
        "total": 3,
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
        "expired": 0,
    }
    (error,) = read_file(client, done["error_file_id"])
    assert (error["custom_id"], error["error"]["code"]) == ("huge", "line_too_long")


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"k": "v" * 513}, "metadata.k"),
    ],
)
def test_metadata_past_openais_limits_is_refused(
    client: httpx.Client, metadata: dict[str, str], param: str
) -> None:
    body = {"model": "sim-gpt", "messages": [{"role": "user", "content": "hi"}]}
    job = client.post("/v1/jobs", json={**body, "metadata": metadata})
    assert job.status_code == 400, job.text
    assert job.json()["error"]["param"].startswith(param)
    batch = client.post(
        "/v1/batches",
        json={"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "metadata": metadata},
    )
    assert batch.status_code == 400, batch.text
    assert json.loads(batch.text)["error"]["code"] == "invalid_request"
