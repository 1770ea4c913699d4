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
    ("What is the capital of France?", "which city is the capital of france"),  # 0.967
    ("Who is the CEO of Apple?", "who is the ceo of apple"),  # case, punctuation: 1.0
    ("What does HTML stand for?", "  What does HTML   stand for ?? "),
]
DIFFERENT = [
    ("What is the capital of France?", "What is the capital of Germany?"),  # a name
    ("Write a birthday poem for Alice.", "Write a birthday poem for Bob."),  # a name
    ("What is 12 times 7?", "What is 12 times 8?"),  # a number
    ("Convert 100 dollars to euros.", "Convert 250 dollars to euros."),  # a number
    ("How tall is Mount Everest?", "How old is Mount Everest?"),
    ("What year did the Berlin Wall fall?", "What year was the Berlin Wall built?"),
    ("Translate 'good morning' to Spanish.", "Translate 'good morning' to French."),
    ("How do I reverse a list in C++?", "How do I reverse a list in C?"),  # inner symbols
    ("What is a+b?", "What is a-b?"),
    ("Who wrote Hamlet?", "Who wrote Macbeth?"),
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


def test_what_is_embedded_is_the_last_user_message_normalised() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "  What IS a+b?? "}]},
        ]
    }
    assert prompt_text(body) == "what is a+b"


def test_another_system_prompt_or_earlier_turn_is_never_compared() -> None:
    def chat(system: str, earlier: str, last: str) -> dict[str, object]:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": earlier},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": last},
        ]
        return {"model": "m", "messages": messages}

    base = group_key("acme", "m", chat("Answer in French.", "Help me.", "What is 2+2?"))
    assert group_key("acme", "m", chat("Answer in French.", "Help me.", "what's 2+2")) == base
    assert group_key("acme", "m", chat("Answer in German.", "Help me.", "What is 2+2?")) != base
    assert group_key("acme", "m", chat("Answer in French.", "Help Bob.", "What is 2+2?")) != base


async def test_different_parameters_or_tenants_are_never_compared(semantic: SemanticCache) -> None:
    first = "How do I reverse a list in Python?"
    assert group_key("acme", "m", _body(first)) != group_key("other", "m", _body(first))
    assert group_key("acme", "m", _body(first)) != group_key("acme", "m2", _body(first))
    assert group_key("acme", "m", _body(first)) != group_key(
        "acme", "m", _body(first, temperature=1)
    )
    assert group_key("acme", "m", _body(first)) == group_key("acme", "m", _body("anything else"))
