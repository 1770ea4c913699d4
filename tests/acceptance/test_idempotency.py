"""Idempotency-Key: a retried or concurrent duplicate POST gets the first response and
creates nothing new; a key is scoped to its tenant and endpoint."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.helpers import chat_line, write_jsonl
from tests.conftest import make_key

REPLAYED = "idempotent-replayed"


@pytest.fixture
def tenant(api_url: str, pg_url: str) -> Iterator[httpx.Client]:
    """A client of a tenant of its own, so its objects can be counted."""
    key = make_key(pg_url, f"idem-{secrets.token_hex(4)}")
    with httpx.Client(
        base_url=api_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=64),
    ) as http:
        yield http


def _upload(client: httpx.Client, path: Path, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    with path.open("rb") as fh:
        return client.post(
            "/v1/files",
            files={"file": (path.name, fh)},
            data={"purpose": "batch"},
            headers=headers,
        )


def _batch_body(file_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **extra,
    }


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [chat_line(f"l-{i}", f"x {i}") for i in range(3)])


def test_fifty_concurrent_batch_creations_with_one_key_make_one_batch(
    tenant: httpx.Client, input_file: Path
) -> None:
    # Given an uploaded file and one Idempotency-Key
    file_id = _upload(tenant, input_file).json()["id"]
    headers = {"Idempotency-Key": f"create-{secrets.token_hex(4)}"}
    # When fifty clients create the batch at once with that key
    with ThreadPoolExecutor(50) as pool:
        responses = list(
            pool.map(
                lambda _: tenant.post("/v1/batches", json=_batch_body(file_id), headers=headers),
                range(50),
            )
        )
    # Then one batch exists, and every response is the first one
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses[:3]]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get(REPLAYED) == "true" for r in responses) == 49
    assert all(r.json() == responses[0].json() for r in responses)
    listed = tenant.get("/v1/batches", params={"limit": 100}).json()["data"]
    assert [b["id"] for b in listed] == [responses[0].json()["id"]]


def test_a_replay_returns_the_first_response_and_other_content_is_refused(
    tenant: httpx.Client, input_file: Path
) -> None:
    file_id = _upload(tenant, input_file).json()["id"]
    headers = {"Idempotency-Key": "batch-1"}
    first = tenant.post("/v1/batches", json=_batch_body(file_id), headers=headers)
    assert first.status_code == 200 and REPLAYED not in first.headers
    # A retry gets the stored response, marked as replayed
    again = tenant.post("/v1/batches", json=_batch_body(file_id), headers=headers)
    assert again.status_code == 200
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    # The same key with another body is refused
    other = tenant.post(
        "/v1/batches", json=_batch_body(file_id, metadata={"x": "y"}), headers=headers
    )
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_keys_belong_to_their_tenant(
    tenant: httpx.Client, client: httpx.Client, input_file: Path
) -> None:
    # Given tenant A used a key
    headers = {"Idempotency-Key": f"shared-{secrets.token_hex(4)}"}
    a_file = _upload(tenant, input_file).json()["id"]
    a = tenant.post("/v1/batches", json=_batch_body(a_file), headers=headers)
    # When tenant B uses the same key string
    b_file = _upload(client, input_file).json()["id"]
    b = client.post("/v1/batches", json=_batch_body(b_file), headers=headers)
    # Then B gets its own batch
    assert a.status_code == b.status_code == 200, b.text
    assert REPLAYED not in b.headers
    assert a.json()["id"] != b.json()["id"]


def test_job_submissions_replay(tenant: httpx.Client) -> None:
    body = {"model": "sim-gpt", "messages": [{"role": "user", "content": "once"}], "priority": 9}
    headers = {"Idempotency-Key": "job-1"}
    first = tenant.post("/v1/jobs", json=body, headers=headers)
    again = tenant.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers[REPLAYED] == "true"


def test_a_request_that_fails_gives_its_key_back(tenant: httpx.Client) -> None:
    # Given a request with a key that fails validation
    headers = {"Idempotency-Key": "job-retry"}
    bad = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
    assert tenant.post("/v1/jobs", json=bad, headers=headers).status_code == 400
    # When it is corrected and sent again with the same key
    good = {**bad, "model": "sim-gpt", "priority": 9}
    retried = tenant.post("/v1/jobs", json=good, headers=headers)
    # Then it runs (the failed attempt did not keep the key)
    assert retried.status_code == 202, retried.text
    assert REPLAYED not in retried.headers


def test_file_uploads_replay_by_content(tenant: httpx.Client, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [chat_line("a", "1")])
    first = _upload(tenant, path, key="file-1")
    again = _upload(tenant, path, key="file-1")
    assert (first.status_code, again.status_code) == (200, 200), again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers[REPLAYED] == "true"
    changed = write_jsonl(tmp_path / "a.jsonl", [chat_line("a", "2")])
    reused = _upload(tenant, changed, key="file-1")
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


def test_an_overlong_key_is_refused(tenant: httpx.Client) -> None:
    body = {"model": "sim-gpt", "messages": [{"role": "user", "content": "x"}]}
    response = tenant.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
