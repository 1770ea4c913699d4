"""Cost-aware routing: cheapest fit by context window and capability, escalation chain."""

from __future__ import annotations

import pytest

from promptq.catalog import parse_catalog
from promptq.errors import ConfigError
from promptq.router import NoRoute, plan_route

MODELS = {
    "models": [
        {
            "name": "small",
            "backend": "openai",
            "base_url": "http://x/v1",
            "input_per_mtok": 0.1,
            "output_per_mtok": 0.4,
            "max_model_len": 200,
            "capabilities": ["summarize", "classify"],
        },
        {
            "name": "large",
            "backend": "openai",
            "base_url": "http://x/v1",
            "input_per_mtok": 3,
            "output_per_mtok": 15,
            "max_model_len": 100000,
            "capabilities": ["summarize", "classify", "code"],
        },
    ],
    "routers": [
        {
            "name": "auto",
            "candidates": ["small", "large"],
            "strategy": "cheapest_fit",
            "escalate_on": ["length", "error"],
        }
    ],
}
CATALOG = parse_catalog(MODELS)
AUTO = CATALOG.routers["auto"]


def _body(words: int, max_tokens: int = 50) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "word " * words}], "max_tokens": max_tokens}


def test_a_short_prompt_goes_to_the_small_model_and_may_escalate() -> None:
    route = plan_route(CATALOG, AUTO, _body(10), None, 1024)
    assert [e.name for e in route.chain] == ["small", "large"]
    assert route.escalates("length") and route.escalates("error")


def test_a_long_prompt_goes_to_the_large_model() -> None:
    route = plan_route(CATALOG, AUTO, _body(400), None, 1024)
    assert [e.name for e in route.chain] == ["large"]


def test_a_task_picks_models_with_that_capability() -> None:
    assert [e.name for e in plan_route(CATALOG, AUTO, _body(5), "code", 1024).chain] == ["large"]
    with pytest.raises(NoRoute):
        plan_route(CATALOG, AUTO, _body(5), "translate", 1024)


def test_an_unhealthy_model_is_skipped_while_another_fits() -> None:
    route = plan_route(CATALOG, AUTO, _body(5), None, 1024, healthy=lambda e: e.name != "small")
    assert [e.name for e in route.chain] == ["large"]


def test_an_unhealthy_pricier_model_stays_in_the_escalation_chain() -> None:
    route = plan_route(CATALOG, AUTO, _body(5), None, 1024, healthy=lambda e: e.name != "large")
    assert [e.name for e in route.chain] == ["small", "large"]


def test_with_no_healthy_model_the_cheapest_fitting_one_is_tried_first() -> None:
    route = plan_route(CATALOG, AUTO, _body(5), None, 1024, healthy=lambda e: False)
    assert [e.name for e in route.chain] == ["small", "large"]


def test_a_router_naming_an_unknown_model_is_refused() -> None:
    bad = {**MODELS, "routers": [{"name": "auto", "candidates": ["small", "nope"]}]}
    with pytest.raises(ConfigError, match="unknown candidate"):
        parse_catalog(bad)
    clash = {**MODELS, "routers": [{"name": "small", "candidates": ["large"]}]}
    with pytest.raises(ConfigError, match="already used"):
        parse_catalog(clash)


def test_cache_fields_are_read_and_checked() -> None:
    models = [{**MODELS["models"][0], "cache": "semantic", "semantic_threshold": 0.9}]  # type: ignore[dict-item]
    entry = parse_catalog({"models": models})["small"]
    assert entry.cache == "semantic" and entry.semantic_threshold == 0.9
    assert entry.cache_ttl_seconds == 86400
    with pytest.raises(ConfigError, match="cache"):
        parse_catalog({"models": [{**MODELS["models"][0], "cache": "always"}]})  # type: ignore[dict-item]
