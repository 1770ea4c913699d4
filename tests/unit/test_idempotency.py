"""Idempotency keys: which keys are valid and what counts as the same request."""

from __future__ import annotations

import io

import pytest

from promptq.errors import InvalidRequest
from promptq.idempotency import check_key, file_sha256, fingerprint


def test_the_fingerprint_ignores_key_order_but_not_content_or_endpoint() -> None:
    a = fingerprint("POST", "/v1/batches", {"x": 1, "y": [1, 2]})
    assert a == fingerprint("POST", "/v1/batches", {"y": [1, 2], "x": 1})
    assert a != fingerprint("POST", "/v1/batches", {"x": 2, "y": [1, 2]})
    assert a != fingerprint("POST", "/v1/jobs", {"x": 1, "y": [1, 2]})


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9", "tab\there"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_key(key)
    assert refused.value.code == "invalid_idempotency_key"


def test_a_key_of_255_printable_characters_is_fine() -> None:
    assert check_key("k" * 255) == "k" * 255


def test_a_file_hash_leaves_the_upload_at_its_start() -> None:
    stream = io.BytesIO(b"line\n" * 1000)
    digest = file_sha256(stream)
    assert len(digest) == 64 and stream.read(5) == b"line\n"
