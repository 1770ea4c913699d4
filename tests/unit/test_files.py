"""Per-line validation of batch input lines."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest

from promptq.batch_input import maybe_unstorable
from promptq.errors import InvalidRequest
from promptq.files import parse_line, read_lines


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


@pytest.mark.parametrize(
    ("raw", "code", "where"),
    [
        (_line(custom_id="c" * 600), "custom_id_too_long", "custom_id"),
        (
            _line(body={"model": "m" * 300, "messages": [{"role": "user"}]}),
            "model_too_long",
            "model",
        ),
        (_with_body(temperature=99), "invalid_body", "body.temperature"),
        (_with_body(priority=-7), "invalid_body", "body.priority"),
        (_with_body(top_p=0), "invalid_body", "body.top_p"),
        (_with_body(max_tokens=0), "invalid_body", "body.max_tokens"),
        (
            _with_body(messages=[{"role": "wizard", "content": "x"}]),
            "invalid_body",
            "body.messages",
        ),
        (_with_body(metadata={f"k{i}": "v" for i in range(17)}), "invalid_body", "body.metadata"),
        (_with_body(metadata={"k" * 65: "v"}), "invalid_body", "body.metadata"),
        (_with_body(metadata={"k": "v" * 513}), "invalid_body", "body.metadata"),
    ],
)
def test_a_field_past_its_limit_fails_its_line_with_a_stable_code(
    raw: str, code: str, where: str
) -> None:
    parsed, _ = parse_line(raw)
    assert parsed.error_code == code
    assert parsed.error_message is not None and where in parsed.error_message
    # Nothing past a column's size is kept: the line can be stored as a failed job.
    assert parsed.custom_id is None or len(parsed.custom_id) <= 512
    assert parsed.model is None


def test_limits_at_their_edge_pass() -> None:
    body = {
        "model": "m" * 200,
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 2,
        "priority": 0,
        "metadata": {f"{i:064d}": "v" * 512 for i in range(16)},
    }
    parsed, _ = parse_line(_line(custom_id="c" * 512, body=body))
    assert parsed.error_code is None, parsed.error_message


def test_an_over_long_line_fails_alone_and_is_never_held_whole() -> None:
    # Given a file whose second line is 40 MB, with a 1 MB line limit
    big = json.dumps({"custom_id": "big", "body": {"x": "y" * 40_000_000}}).encode()
    data = b"\n".join([_line(custom_id="a").encode(), big, _line(custom_id="b").encode(), b""])
    stream = io.BytesIO(data)
    del big
    # When it is read
    tracemalloc.start()
    lines = list(read_lines(stream, max_lines=10, max_line_bytes=1 << 20))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Then the long line fails as line_too_long with its custom_id, the others are kept
    # whole, to be parsed when a batch is validated
    codes = [(line.line_no, line.custom_id, line.error_code) for line in lines]
    assert codes == [(1, None, None), (2, "big", "line_too_long"), (3, None, None)]
    assert lines[0].raw == _line(custom_id="a")
    assert len(lines[1].raw) <= 1001
    # And reading it cost a small multiple of the line limit, not of the line
    assert peak < 8 * (1 << 20), peak


def test_upload_parses_lines_only_until_one_is_json() -> None:
    # Given a file whose first line is not JSON, then two lines that are
    data = b"\n".join([b"{oops", _line(custom_id="a").encode(), b"[1]", b"", b"   "])
    # When it is read for storage
    lines = list(read_lines(io.BytesIO(data), max_lines=10, max_line_bytes=1 << 20))
    # Then blank lines are dropped, and JSON is looked for until it is found, then no more
    assert [(line.line_no, line.is_json) for line in lines] == [(1, False), (2, True), (3, None)]


def test_a_file_past_its_line_limit_is_refused() -> None:
    data = b"\n".join(_line(custom_id=str(i)).encode() for i in range(3))
    with pytest.raises(InvalidRequest) as refused:
        list(read_lines(io.BytesIO(data), max_lines=2, max_line_bytes=1 << 20))
    assert (refused.value.code, refused.value.http_status) == ("too_many_lines", 413)


@pytest.mark.parametrize(
    "raw",
    [
        _with_body(x=1e308).replace("1e+308", "1e999"),  # a float too large: infinity
        _with_body(x=1.0).replace("1.0", "1" + "0" * 400 + ".0"),  # likewise, no exponent
        _with_body(x=float("-inf")),
        _line(custom_id="a\udc00"),
        _line(custom_id="a\udc00").replace("\\udc00", "\\uDC00"),
        _with_body(x=_nested(70)),
    ],
)
def test_the_cheap_look_never_misses_what_cannot_be_stored(raw: str) -> None:
    # Given a line whose value cannot be stored, in the forms JSON text allows
    # Then the look at its text sends it to the full walk, and it fails
    assert maybe_unstorable(raw)
    assert parse_line(raw)[0].error_code == "invalid_request"


def test_an_ordinary_line_skips_the_walk() -> None:
    assert not maybe_unstorable(_with_body(temperature=0.5, metadata={"k": "v"}))
