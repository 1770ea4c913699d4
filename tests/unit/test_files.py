"""Per-line validation of batch input lines."""

from __future__ import annotations

import json

import pytest

from promptq.files import parse_line


def _line(**overrides: object) -> str:
    line: dict[str, object] = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
    }
    line.update(overrides)
    return json.dumps(line)


def _with_body(**extra: object) -> str:
    return _line(body={"model": "m", "messages": [{"role": "user", "content": "x"}], **extra})


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_good_line_parses() -> None:
    parsed, was_json = parse_line(_line())
    assert was_json and parsed.error_code is None
    assert (parsed.custom_id, parsed.model) == ("a", "m")


@pytest.mark.parametrize(
    ("raw", "code", "was_json"),
    [
        ("{oops", "invalid_json", False),
        ("[1, 2]", "invalid_request", True),
        (_line(custom_id=None), "missing_custom_id", True),
        (_line(custom_id=""), "missing_custom_id", True),
        (_line(method="GET"), "invalid_method", True),
        (_line(url="/v1/embeddings"), "invalid_url", True),
        (_line(body="text"), "invalid_body", True),
        (_line(body={"messages": [{"role": "user", "content": "x"}]}), "missing_model", True),
        (_line(body={"model": "m", "messages": []}), "invalid_body", True),
        # What json.loads or Postgres cannot take: each fails alone, not the upload.
        ("9" * 5000, "invalid_json", False),
        ("[" * 100_000, "invalid_json", False),
        (_line(custom_id="a\x00"), "invalid_request", True),
        (_with_body(messages=[{"role": "user", "content": "\ud800"}]), "invalid_request", True),
        (_with_body(x=float("nan")), "invalid_request", True),
        (_with_body(x=_nested(100)), "invalid_request", True),
    ],
)
def test_each_bad_line_gets_its_code(raw: str, code: str, was_json: bool) -> None:
    parsed, json_ok = parse_line(raw)
    assert (parsed.error_code, json_ok) == (code, was_json)
    assert parsed.error_message


def test_a_line_with_an_unstorable_custom_id_fails_without_it() -> None:
    parsed, _ = parse_line(_line(custom_id="a\x00"))
    assert (parsed.error_code, parsed.custom_id) == ("invalid_request", None)
    assert parsed.error_message == (
        "custom_id contains a NUL character (\\u0000), which promptq cannot store."
    )
