"""Token counting before a call: tiktoken only from disk, else a documented over-estimate."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptq import tokens
from promptq.catalog import ModelEntry
from promptq.tokens import (
    count_prompt_tokens,
    count_with,
    encoder_for,
    estimate_tokens,
    max_completion_tokens,
)


def _entry(**fields: object) -> ModelEntry:
    base: dict[str, object] = {"name": "m", "backend": "openai", "base_url": "http://x/v1"}
    return ModelEntry.model_validate({**base, **fields})


class ByteEncoder:
    """A tokenizer with one token per UTF-8 byte, to check the framing arithmetic."""

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@pytest.fixture
def empty_tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens._offline_encoding.cache_clear()
    yield tmp_path
    tokens._offline_encoding.cache_clear()


def test_estimate_is_bytes_over_three_rounded_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcd") == 2
    assert estimate_tokens("é") == 1  # 2 bytes


def test_a_chat_body_counts_texts_roles_and_framing() -> None:
    body = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    }
    # texts: "be brief"(8) + "system"(6) + "hi"(2) + "user"(4) = 20 bytes; 2 messages x 4 + 3
    assert count_with(ByteEncoder(), body) == 20 + 2 * 4 + 3
    assert count_with(None, body) == (3 + 2 + 1 + 2) + 2 * 4 + 3


def test_content_blocks_names_and_tools_are_counted() -> None:
    body = {
        "messages": [
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "abc"}]},
        ],
        "tools": [{"type": "function"}],
    }
    tools_json = '[{"type":"function"}]'
    expected = len("abc") + len("user") + len("ann") + len(tools_json) + 4 + 1 + 3
    assert count_with(ByteEncoder(), body) == expected


def test_the_estimate_over_counts_english_against_a_words_count() -> None:
    # Real BPE vocabularies give roughly one token per short English word; the estimate
    # must stay above that so reservations err high.
    text = "The quarterly report shows revenue growth driven by strong sales in Europe."
    body = {"messages": [{"role": "user", "content": text}]}
    assert count_with(None, body) > len(text.split()) + 4 + 3


def test_without_the_bpe_file_openai_models_are_estimated(empty_tiktoken_cache: Path) -> None:
    entry = _entry(upstream="gpt-4o-mini")
    assert encoder_for(entry) is None
    body = {"messages": [{"role": "user", "content": "hello there"}]}
    assert count_prompt_tokens(entry, body) == count_with(None, body)
    assert list(empty_tiktoken_cache.iterdir()) == []  # nothing was fetched


def test_a_damaged_bpe_file_is_not_used_or_replaced(empty_tiktoken_cache: Path) -> None:
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    damaged = empty_tiktoken_cache / hashlib.sha1(url.encode()).hexdigest()
    damaged.write_bytes(b"not a bpe file")
    assert encoder_for(_entry(upstream="gpt-4o-mini")) is None
    assert damaged.read_bytes() == b"not a bpe file"


def test_non_openai_models_and_unknown_names_are_estimated(empty_tiktoken_cache: Path) -> None:
    assert encoder_for(_entry(upstream="llama-3-8b")) is None
    assert encoder_for(_entry(backend="anthropic", base_url="http://x")) is None


def test_max_completion_tokens_prefers_the_request_then_the_default() -> None:
    entry = _entry()
    assert max_completion_tokens(entry, {"max_completion_tokens": 50, "max_tokens": 9}, 7) == 50
    assert max_completion_tokens(entry, {"max_tokens": 9}, 7) == 9
    assert max_completion_tokens(entry, {}, 7) == 7
    assert max_completion_tokens(entry, {"max_tokens": True, "max_completion_tokens": 0}, 7) == 7


def test_max_completion_tokens_never_exceeds_the_context() -> None:
    entry = ModelEntry.model_validate(
        {"name": "v", "backend": "vllm", "source": "x", "max_model_len": 100}
    )
    assert max_completion_tokens(entry, {"max_tokens": 5000}, 7) == 100
