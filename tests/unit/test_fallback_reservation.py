"""A budget reservation covers the fallbacks traffic control may serve a job on."""

from __future__ import annotations

from decimal import Decimal

from promptq.budgets import max_cost
from promptq.catalog import parse_catalog
from promptq.workers.spending import may_serve

BODY = {"messages": [{"role": "user", "content": "Summarise this."}], "max_tokens": 100}


def _catalog() -> dict[str, object]:
    remote = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    return {
        "models": [
            {"name": "cheap", **remote, "input_per_mtok": 1, "output_per_mtok": 1,
             "fallbacks": ["dear"], "context_window_fallbacks": ["long"]},
            {"name": "dear", **remote, "input_per_mtok": 10, "output_per_mtok": 30},
            {"name": "long", **remote, "input_per_mtok": 2, "output_per_mtok": 4},
            {"name": "alone", **remote, "input_per_mtok": 1, "output_per_mtok": 1},
        ]
    }  # fmt: skip


def test_a_model_with_fallbacks_reserves_what_its_dearest_fallback_costs() -> None:
    # Given a cheap model whose fallback costs ten times as much
    catalog = parse_catalog(_catalog())
    # When the models that may serve its jobs are listed
    models = may_serve(catalog, catalog["cheap"])
    # Then the fallback and the context-window fallback are among them, and the most any of
    # them can cost is the dear fallback's
    assert [m.name for m in models] == ["cheap", "dear", "long"]
    most = max(max_cost(m, BODY, 1024) for m in models)
    assert most == max_cost(catalog["dear"], BODY, 1024)
    assert most > max_cost(catalog["cheap"], BODY, 1024) > Decimal(0)


def test_a_model_without_fallbacks_reserves_its_own_cost() -> None:
    catalog = parse_catalog(_catalog())
    assert [m.name for m in may_serve(catalog, catalog["alone"])] == ["alone"]
