"""The worker's cost control around an attempt, against a real Redis (and the real
embedding model for the semantic cache): what the cache answers, and how hits are billed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from promptq.catalog import parse_catalog
from promptq.config import Settings
from promptq.db import Database
from promptq.jobs import ClaimedJob
from promptq.workers.completion import Completion
from promptq.workers.spending import Paid, Spending
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio

CATALOG = parse_catalog(
    {
        "models": [
            {
                "name": name,
                "backend": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "input_per_mtok": 1,
                "output_per_mtok": 2,
                "cache": mode,
            }
            for name, mode in (("exact", "exact"), ("semantic", "semantic"), ("off", "off"))
        ]
    }
)


@pytest.fixture
async def spending(redis_server: RedisServer, db: Database) -> AsyncIterator[Spending]:
    settings = Settings(redis_url=redis_server.url, database_url=str(db.engine.url))
    spend = Spending(settings, CATALOG, db)
    await spend._redis.flushdb()
    yield spend
    await spend.close()


def _job(n: int, text: str, model: str, tenant: str = "acme", **extra: object) -> ClaimedJob:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return ClaimedJob(
        id=f"job_{n}",
        tenant=tenant,
        batch_id=None,
        model=model,
        body=body,
        priority=5,
        attempt=1,
        max_attempts=3,
        owner="w",
        **extra,  # type: ignore[arg-type]
    )


async def _answer(spending: Spending, job: ClaimedJob) -> None:
    entry = CATALOG[job.model]
    ticket = await spending.lookup(job, entry)
    assert ticket.answer is None and ticket.lead is not None
    completion = Completion("the answer", "stop", 10, 20)
    await spending.remember(ticket, job, entry, completion, {"id": "chatcmpl-x", "choices": []})


async def test_an_exact_hit_is_billed_zero_and_says_what_it_saved(spending: Spending) -> None:
    await _answer(spending, _job(1, "What is the capital of France?", "exact"))
    entry = CATALOG["exact"]
    ticket = await spending.lookup(_job(2, "What is the capital of France?", "exact"), entry)
    outcome = spending.cached_outcome(ticket, entry, Paid())
    assert outcome.cached and outcome.cost_usd == 0 and outcome.content == "the answer"
    assert outcome.saved_usd == entry.cost(10, 20) == Decimal("0.00005")
    assert outcome.response["promptq"] == {
        "cached": True,
        "served_by": "exact",
        "cache": "exact",
        "cached_from_job": "job_1",
    }


async def test_no_hit_for_another_tenant_an_opt_out_or_a_model_without_cache(
    spending: Spending,
) -> None:
    await _answer(spending, _job(1, "hello", "exact"))
    stranger = await spending.lookup(_job(2, "hello", "exact", tenant="other"), CATALOG["exact"])
    assert stranger.answer is None and stranger.lead is not None
    await spending.abandon(stranger)
    opted = await spending.lookup(_job(3, "hello", "exact", cache_opt_out=True), CATALOG["exact"])
    assert opted.answer is None and opted.lead is None
    off = await spending.lookup(_job(4, "hello", "off"), CATALOG["off"])
    assert off.answer is None and off.lead is None


async def test_the_semantic_cache_answers_a_paraphrase_not_another_question(
    spending: Spending,
) -> None:
    await _answer(spending, _job(1, "How do I reverse a list in Python?", "semantic"))
    entry = CATALOG["semantic"]
    paraphrase = await spending.lookup(
        _job(2, "How can I reverse a Python list?", "semantic"), entry
    )
    assert paraphrase.answer is not None and paraphrase.kind == "semantic"
    other = await spending.lookup(_job(3, "How do I sort a list in Python?", "semantic"), entry)
    assert other.answer is None
    await spending.abandon(other)
