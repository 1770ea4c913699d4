"""Bad input gets a clear 4xx JSON error with a stable code; bad lines fail alone."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.acceptance.helpers import chat_line, read_file, upload_and_run, wait_batch, write_jsonl
from tests.conftest import make_key
from tests.stack import Stack


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    code: str = response.json()["error"]["code"]
    assert response.json()["error"]["message"]
    return code


def test_requests_without_a_valid_key_get_401(api_url: str) -> None:
    assert _error(httpx.get(f"{api_url}/v1/batches"), 401) == "unauthorized"
    bad = {"Authorization": "Bearer pq-not-a-key"}
    assert _error(httpx.get(f"{api_url}/v1/batches", headers=bad), 401) == "unauthorized"


def test_an_unknown_model_gets_400_model_not_found(client: httpx.Client) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    assert _error(client.post("/v1/jobs", json=body), 400) == "model_not_found"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"model": "sim-gpt", "messages": []},
        {"model": "sim-gpt", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "sim-gpt", "messages": [{"role": "user", "content": "hi"}], "priority": 12},
        {"model": "sim-gpt", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
        # Values Postgres cannot store are refused before they reach it.
        {"model": "sim-gpt", "messages": [{"role": "user", "content": "nul \x00"}]},
        {"model": "sim-gpt", "messages": [{"role": "user"}], "metadata": {"k\x00": "v"}},
    ],
)
def test_a_malformed_job_gets_400_invalid_request(client: httpx.Client, body: dict) -> None:  # type: ignore[type-arg]
    assert _error(client.post("/v1/jobs", json=body), 400) == "invalid_request"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"deadline": "2020-01-01T00:00:00Z"}, "deadline"),  # in the past
        ({"deadline": "2030-01-01T00:00:00"}, "deadline"),  # no offset
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 30, "deadline": "2030-01-01T00:00:00Z"}, "deadline"),
    ],
)
def test_a_bad_deadline_gets_400_invalid_deadline(
    client: httpx.Client, fields: dict[str, object], param: str
) -> None:
    body = {"model": "sim-gpt", "messages": [{"role": "user", "content": "hi"}], **fields}
    response = client.post("/v1/jobs", json=body)
    assert _error(response, 400) == "invalid_deadline"
    assert response.json()["error"]["param"] == param


def test_a_job_with_a_timeout_shows_its_deadline(client: httpx.Client) -> None:
    body = {"model": "sim-gpt", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/jobs", json={**body, "timeout_seconds": 600})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["deadline_at"] - job["created_at"] in (599, 600, 601)


def test_a_body_that_is_not_json_gets_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert _error(response, 400) == "invalid_request"


def test_unknown_ids_get_404(client: httpx.Client) -> None:
    assert _error(client.get("/v1/jobs/job_nope"), 404) == "not_found"
    assert _error(client.get("/v1/batches/batch_nope"), 404) == "not_found"
    assert _error(client.get("/v1/files/file-nope/content"), 404) == "not_found"


def test_a_file_that_is_not_jsonl_gets_400(client: httpx.Client) -> None:
    files = {"file": ("x.jsonl", b"this is not json\nneither is this\n")}
    response = client.post("/v1/files", files=files, data={"purpose": "batch"})
    assert _error(response, 400) == "invalid_file"


def test_a_batch_on_a_missing_file_or_endpoint_is_refused(client: httpx.Client) -> None:
    body = {
        "input_file_id": "file-nope",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    assert _error(client.post("/v1/batches", json=body), 404) == "not_found"
    body["endpoint"] = "/v1/embeddings"
    assert _error(client.post("/v1/batches", json=body), 400) == "invalid_endpoint"


def test_malformed_lines_fail_alone_and_the_valid_lines_run(
    client: httpx.Client, pipeline: str, tmp_path: Path
) -> None:
    # Given a file mixing valid lines with every kind of bad line
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            chat_line("ok-1", "first"),
            "{this is not json",
            json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
            chat_line("ok-1", "a duplicate custom_id"),
            chat_line("bad-model", "hi", model="no-such-model"),
            json.dumps(
                {
                    "custom_id": "bad-url",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"model": "sim-gpt", "prompt": "hi"},
                }
            ),
            json.dumps(
                {
                    "custom_id": "no-messages",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "sim-gpt"},
                }
            ),
            chat_line("ok-2", "second"),
        ],
    )
    # When it runs as a batch
    batch = wait_batch(client, upload_and_run(client, path)["id"])
    # Then the valid lines succeed and each bad line is in the error file with its code
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {
        "total": 8,
        "completed": 2,
        "failed": 6,
        "cancelled": 0,
        "expired": 0,
    }
    output = read_file(client, batch["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == ["ok-1", "ok-2"]
    errors = read_file(client, batch["error_file_id"])
    codes = sorted((e["custom_id"] or "", e["error"]["code"]) for e in errors)
    assert codes == [
        ("", "invalid_json"),
        ("", "missing_custom_id"),
        ("bad-model", "model_not_found"),
        ("bad-url", "invalid_url"),
        ("no-messages", "invalid_body"),
        ("ok-1", "duplicate_custom_id"),
    ]


@pytest.fixture(scope="module")
def small_api(stack: Stack) -> str:
    """An API with a 64 KiB upload limit and 4 KiB request limit."""
    return stack.api({"PROMPTQ_MAX_UPLOAD_BYTES": "65536", "PROMPTQ_MAX_REQUEST_BYTES": "4096"})


def test_oversized_payloads_get_413(small_api: str, pg_url: str) -> None:
    headers = {"Authorization": f"Bearer {make_key(pg_url, 'big')}"}
    line = chat_line("x", "y" * 1000).encode() + b"\n"
    files = {"file": ("big.jsonl", line * 100)}
    response = httpx.post(
        f"{small_api}/v1/files", files=files, data={"purpose": "batch"}, headers=headers
    )
    assert _error(response, 413) == "payload_too_large"
    body = {"model": "sim-gpt", "messages": [{"role": "user", "content": "z" * 8000}]}
    assert _error(httpx.post(f"{small_api}/v1/jobs", json=body, headers=headers), 413) == (
        "payload_too_large"
    )
