"""The semantic cache with the real embedding model (offline, from its PyPI package) and a
real Redis: paraphrases hit, different questions miss, at the default threshold 0.95."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from promptq.semantic_cache import Embedder, SemanticCache, group_key, prompt_text
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio

THRESHOLD = 0.95

# (cached prompt, later prompt): each pair measured on all-MiniLM-L6-v2.
PARAPHRASES = [
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("What is the capital of France?", "What's the capital city of France?"),
]
DIFFERENT = [
    ("What is the capital of France?", "What is the capital of Germany?"),  # a name
    ("Write a birthday poem for Alice.", "Write a birthday poem for Bob."),  # a name
    ("What is 12 times 7?", "What is 12 times 8?"),  # a number
    ("Convert 100 dollars to euros.", "Convert 250 dollars to euros."),  # a number
    ("How tall is Mount Everest?", "How old is Mount Everest?"),
    ("What year did the Berlin Wall fall?", "What year was the Berlin Wall built?"),
    ("Translate 'good morning' to Spanish.", "Translate 'good morning' to French."),
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    model = Embedder()
    yield model
    model.close()


@pytest.fixture
async def semantic(redis_server: RedisServer, embedder: Embedder) -> AsyncIterator[SemanticCache]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield SemanticCache(client, embedder)
    await client.aclose()


def _body(text: str, **params: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **params}


async def _cache_then_ask(semantic: SemanticCache, first: str, second: str) -> float | None:
    group = group_key("acme", "m", _body(first))
    text = prompt_text(_body(first))
    match, vector = await semantic.find(group, text, THRESHOLD)
    assert match is None  # nothing cached yet
    await semantic.add(group, text, vector, "exact-key-of-first", ttl_seconds=60)
    found, _ = await semantic.find(
        group_key("acme", "m", _body(second)), prompt_text(_body(second)), THRESHOLD
    )
    assert found is None or found.exact_key == "exact-key-of-first"
    return None if found is None else found.score


@pytest.mark.parametrize(("first", "second"), PARAPHRASES)
async def test_a_paraphrase_hits(semantic: SemanticCache, first: str, second: str) -> None:
    score = await _cache_then_ask(semantic, first, second)
    assert score is not None and score >= THRESHOLD


@pytest.mark.parametrize(("first", "second"), DIFFERENT)
async def test_a_different_question_misses(
    semantic: SemanticCache, first: str, second: str
) -> None:
    assert await _cache_then_ask(semantic, first, second) is None


async def test_different_parameters_or_tenants_are_never_compared(semantic: SemanticCache) -> None:
    first = "How do I reverse a list in Python?"
    assert group_key("acme", "m", _body(first)) != group_key("other", "m", _body(first))
    assert group_key("acme", "m", _body(first)) != group_key("acme", "m2", _body(first))
    assert group_key("acme", "m", _body(first)) != group_key(
        "acme", "m", _body(first, temperature=1)
    )
    assert group_key("acme", "m", _body(first)) == group_key("acme", "m", _body("anything else"))
