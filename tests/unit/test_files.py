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
    ],
)
def test_each_bad_line_gets_its_code(raw: str, code: str, was_json: bool) -> None:
    parsed, json_ok = parse_line(raw)
    assert (parsed.error_code, json_ok) == (code, was_json)
    assert parsed.error_message
