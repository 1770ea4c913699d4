"""Estimates before spending: the counted prompt tokens, the most completion tokens and
the most a batch can cost, per model. An upper bound: a line never costs more than its
share (a routed line counts every candidate it may escalate through)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from promptq.catalog import Catalog, ModelEntry
from promptq.files import parse_line
from promptq.tokens import count_prompt_tokens, max_completion_tokens

__all__ = [
    "Estimate",
    "ModelEstimate",
    "estimate_file",
    "estimate_lines",
    "serving_entries",
]


@dataclass
class ModelEstimate:
    """One model's lines: how many, their prompt tokens, most completion tokens, cost."""

    model: str
    requests: int = 0
    prompt_tokens: int = 0
    max_completion_tokens: int = 0
    max_cost_usd: Decimal = Decimal(0)


@dataclass
class Estimate:
    """A whole file's estimate; `cheapest_line_usd` is the least one runnable line costs."""

    by_model: dict[str, ModelEstimate] = field(default_factory=dict)
    invalid_lines: int = 0
    cheapest_line_usd: Decimal | None = None

    @property
    def max_cost_usd(self) -> Decimal:
        return sum((m.max_cost_usd for m in self.by_model.values()), Decimal(0))

    def add(
        self, model: str, entries: list[ModelEntry], body: Mapping[str, Any], default: int
    ) -> None:
        """Count one line asking for `model`, which may run on each of `entries`."""
        row = self.by_model.setdefault(model, ModelEstimate(model))
        line_cost = Decimal(0)
        for index, entry in enumerate(entries):
            prompt = count_prompt_tokens(entry, body)
            completion = max_completion_tokens(entry, body, default)
            if index == 0:  # tokens as the first model counts them
                row.prompt_tokens += prompt
                row.max_completion_tokens += completion
            line_cost += entry.cost(prompt, completion)
        row.requests += 1
        row.max_cost_usd += line_cost
        if self.cheapest_line_usd is None or line_cost < self.cheapest_line_usd:
            self.cheapest_line_usd = line_cost


def serving_entries(catalog: Catalog, model: str) -> list[ModelEntry] | None:
    """The models a line naming `model` may run on and be charged for; None if unknown."""
    entry = catalog.get(model)
    if entry is not None:
        return [entry]
    router = catalog.routers.get(model)
    if router is None:
        return None
    candidates = [catalog[c] for c in router.candidates]
    if router.escalate_on:
        return candidates  # may run on each in turn
    return [max(candidates, key=lambda e: (e.output_per_mtok, e.input_per_mtok))]


def estimate_lines(
    lines: Iterable[tuple[str | None, Mapping[str, Any] | None]], catalog: Catalog, default: int
) -> Estimate:
    """Estimate (model, body) pairs; lines with no body or an unknown model are counted
    as invalid (they would fail without cost)."""
    estimate = Estimate()
    for model, body in lines:
        entries = serving_entries(catalog, model) if model and body is not None else None
        if entries is None or body is None or model is None:
            estimate.invalid_lines += 1
            continue
        estimate.add(model, entries, body, default)
    return estimate


def estimate_file(
    path: Path, catalog: Catalog, default: int, *, model: str | None = None
) -> Estimate:
    """Estimate a JSONL batch file on disk, without submitting it (`model`: as if every
    line named it, like `promptq submit --model`)."""

    def lines() -> Iterable[tuple[str | None, Mapping[str, Any] | None]]:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                if raw.strip():
                    parsed, _ = parse_line(raw.strip())
                    body = parsed.body if parsed.error_code is None else None
                    yield (model or parsed.model), body

    return estimate_lines(lines(), catalog, default)
