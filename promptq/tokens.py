"""How many tokens a request may spend, counted before it is sent.

Rate limits and budgets reserve tokens before a call and settle the provider's reported
usage after, so the count here must never be far below the truth.

- OpenAI-family models (``backend = "openai"`` and an upstream name tiktoken knows) are
  counted with tiktoken, the way OpenAI's cookbook counts chat messages, but only when the
  encoding's BPE file is already on disk: promptq never downloads it. tiktoken looks in
  ``$TIKTOKEN_CACHE_DIR`` (else ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``);
  copy the file there to get exact counts on a machine without internet access.
- Every other model, and OpenAI models without the file, get a deliberate over-estimate:
  UTF-8 bytes / 3, rounded up, plus 4 tokens per message and 3 for the reply's priming.
  English averages about 4 bytes per token in the common BPE vocabularies, so this errs
  high by about a quarter: a reservation that is too large only wastes a little capacity
  until settlement, one that is too small causes 429s.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from promptq.catalog import Backend, ModelEntry

__all__ = [
    "BYTES_PER_TOKEN",
    "count_prompt_tokens",
    "estimate_tokens",
    "max_completion_tokens",
]

#: The estimate's divisor: fewer bytes per token than any common BPE vocabulary averages.
BYTES_PER_TOKEN = 3
# Chat framing, as OpenAI's cookbook counts it for current models.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3
# Request fields other than messages that the provider also counts as prompt tokens.
_PROMPT_FIELDS = ("tools", "functions", "response_format", "tool_choice")

_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
# The published files' sha256 (as tiktoken_ext.openai_public checks them): a damaged cache
# file must not make tiktoken fetch a fresh copy.
_BPE_SHA256 = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


class Encoder(Protocol):
    """What promptq needs of a tokenizer (tiktoken's Encoding has it)."""

    def encode_ordinary(self, text: str) -> list[int]: ...


def _tiktoken_cache_dir() -> Path | None:
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            value = os.environ[name]
            return Path(value) if value else None  # "" disables tiktoken's cache
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def bpe_file_ready(encoding_name: str) -> bool:
    """True when tiktoken would load `encoding_name` from its cache, without the network."""
    expected = _BPE_SHA256.get(encoding_name)
    cache_dir = _tiktoken_cache_dir()
    if expected is None or cache_dir is None:
        return False
    url = _BPE_URL.format(encoding_name)
    path = cache_dir / hashlib.sha1(url.encode()).hexdigest()  # tiktoken's cache key
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == expected
    except OSError:
        return False


@lru_cache(maxsize=64)
def _offline_encoding(upstream: str) -> Encoder | None:
    """tiktoken's encoding for an OpenAI model name, if tiktoken and its file are here."""
    try:
        import tiktoken
        from tiktoken.model import encoding_name_for_model
    except ImportError:
        return None
    try:
        name = encoding_name_for_model(upstream)
    except KeyError:
        return None
    if not bpe_file_ready(name):
        return None
    try:
        encoding: Encoder = tiktoken.get_encoding(name)
    except Exception:  # a tiktoken bug or a race on the cache file: estimate instead
        return None
    return encoding


def encoder_for(entry: ModelEntry) -> Encoder | None:
    """The tokenizer used for `entry`, or None when its prompts are estimated."""
    if entry.backend is not Backend.OPENAI:
        return None
    return _offline_encoding(entry.upstream_name)


def estimate_tokens(text: str) -> int:
    """An over-estimate of the tokens in `text`: its UTF-8 bytes / 3, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def _content_parts(content: Any) -> list[str]:
    """The texts to count in a message's content: text blocks as text, others as JSON."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                parts.append(_json(block))
        return parts
    return [_json(content)]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _message_texts(message: Any) -> tuple[list[str], int]:
    """The texts of one message and its framing tokens."""
    if not isinstance(message, Mapping):
        return [_json(message)], _TOKENS_PER_MESSAGE
    texts = _content_parts(message.get("content"))
    overhead = _TOKENS_PER_MESSAGE
    for key in ("role", "name", "tool_call_id"):
        value = message.get(key)
        if isinstance(value, str):
            texts.append(value)
            overhead += _TOKENS_PER_NAME if key == "name" else 0
    if message.get("tool_calls") is not None:
        texts.append(_json(message["tool_calls"]))
    return texts, overhead


def _count_texts(texts: list[str], encoder: Encoder | None) -> int:
    if encoder is None:
        return sum(estimate_tokens(text) for text in texts)
    return sum(len(encoder.encode_ordinary(text)) for text in texts)


def count_with(encoder: Encoder | None, body: Mapping[str, Any]) -> int:
    """Prompt tokens of a chat-completions body, with `encoder` or the estimate."""
    messages = body.get("messages")
    texts: list[str] = []
    total = _REPLY_PRIMING
    if isinstance(messages, list):
        for message in messages:
            message_texts, overhead = _message_texts(message)
            texts.extend(message_texts)
            total += overhead
    elif isinstance(body.get("prompt"), str):
        texts.append(body["prompt"])
    texts.extend(_json(body[key]) for key in _PROMPT_FIELDS if body.get(key) is not None)
    return total + _count_texts(texts, encoder)


def count_prompt_tokens(entry: ModelEntry, body: Mapping[str, Any]) -> int:
    """Tokens the prompt of `body` (a chat-completions request) costs on `entry`'s model."""
    return count_with(encoder_for(entry), body)


def max_completion_tokens(entry: ModelEntry, body: Mapping[str, Any], default: int) -> int:
    """The most completion tokens a request may produce: its `max_completion_tokens` or
    `max_tokens`, else `default`; never more than the model's context (`max_model_len`)."""
    limit = default
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limit = value
            break
    if entry.max_model_len is not None:
        limit = min(limit, entry.max_model_len)
    return max(1, limit)
