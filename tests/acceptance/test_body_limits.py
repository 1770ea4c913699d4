"""Every oversized body gets 413 `payload_too_large`, whether it declares its length or is
sent chunked (no length), for JSON requests and multipart uploads alike."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.acceptance.helpers import chat_line
from tests.conftest import make_key
from tests.stack import Stack


@pytest.fixture(scope="module")
def small_api(stack: Stack) -> str:
    """An API with a 64 KiB upload limit and a 4 KiB request limit."""
    return stack.api({"PROMPTQ_MAX_UPLOAD_BYTES": "65536", "PROMPTQ_MAX_REQUEST_BYTES": "4096"})


@pytest.fixture(scope="module")
def auth(pg_url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(pg_url, 'limits')}"}


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    # A generator body: httpx sends it chunked, with no content-length.
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _multipart(payload: bytes) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://x/", files={"file": ("in.jsonl", payload)}, data={"purpose": "batch"}
    )
    return request.read(), request.headers["content-type"]


def test_a_chunked_upload_over_the_limit_gets_413(small_api: str, auth: dict[str, str]) -> None:
    # Given a multipart upload of about 100 KB, sent with no content-length
    body, content_type = _multipart((chat_line("x", "y" * 1000) + "\n").encode() * 100)
    # When it is posted
    response = httpx.post(
        f"{small_api}/v1/files",
        content=_chunks(body),
        headers={**auth, "content-type": content_type},
    )
    # Then it is refused as too large, not as malformed
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_chunked_json_body_over_the_limit_gets_413(small_api: str, auth: dict[str, str]) -> None:
    body = b'{"model": "sim-gpt", "messages": [{"role": "user", "content": "' + b"z" * 8000
    body += b'"}]}'
    response = httpx.post(
        f"{small_api}/v1/jobs",
        content=_chunks(body),
        headers={**auth, "content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_chunked_body_under_the_limit_still_works(small_api: str, auth: dict[str, str]) -> None:
    body, content_type = _multipart((chat_line("x", "small") + "\n").encode())
    response = httpx.post(
        f"{small_api}/v1/files",
        content=_chunks(body, 50),
        headers={**auth, "content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.json()["line_count"] == 1
