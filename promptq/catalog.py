"""The models file: every model clients may name, its backend, prices and limits."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from promptq.errors import ConfigError, ModelNotFound

__all__ = [
    "DEFAULT_MODELS_FILE",
    "Backend",
    "CacheMode",
    "Catalog",
    "Deployment",
    "ModelEntry",
    "RouterEntry",
    "load_catalog",
]

DEFAULT_MODELS_FILE = Path(__file__).parent / "data" / "models.toml"


class Backend(StrEnum):
    """Which worker runs a model."""

    #: OpenAI-compatible chat completions over HTTP (OpenAI, vLLM servers, relays).
    OPENAI = "openai"
    #: Anthropic Messages over HTTP.
    ANTHROPIC = "anthropic"
    #: A vLLM engine inside promptq's own GPU worker.
    VLLM = "vllm"


class CacheMode(StrEnum):
    """Whether a model's answers are kept and replayed (promptq.cache)."""

    #: Every request goes to the backend.
    OFF = "off"
    #: A request identical to an earlier one of the same tenant is answered from the cache.
    EXACT = "exact"
    #: Also a request whose prompt means the same as an earlier one (promptq.semantic_cache).
    SEMANTIC = "semantic"


class Deployment(BaseModel):
    """One server or key that serves a model (`[[models.deployments]]`), with its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Names the deployment's shared limits and breaker; default `<model>/<index>`.
    name: str | None = Field(default=None, min_length=1)
    base_url: str = Field(min_length=1)
    api_key_env: str | None = None
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    #: Share of traffic relative to the model's other deployments when all have room.
    weight: float = Field(default=1.0, gt=0)

    def api_key(self) -> str | None:
        """The provider key, read from the environment at call time (never stored)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ModelEntry(BaseModel):
    """One `[[models]]` entry of the models file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    backend: Backend
    upstream: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    input_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    output_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    # Requests in flight at once, over every worker process (the flat form's deployment).
    max_concurrency: int | None = Field(default=None, gt=0)
    # Several servers or keys for this model; the flat fields above are one deployment.
    deployments: tuple[Deployment, ...] = ()
    # Models tried in order when every deployment is open-circuit or out of fault retries,
    # and when the prompt does not fit this model's context window.
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()
    # vLLM engine options (backend = "vllm").
    source: str | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int = Field(default=32, gt=0)
    # Running slots kept free of bulk work so an interactive request starts at once.
    interactive_slots: int = Field(default=2, ge=0)
    # An interactive request that finds no free slot aborts the lowest-priority running bulk
    # request, which runs again first in line (same attempt, billed once).
    preempt: bool = True
    dtype: str = "auto"
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    cpu_kvcache_gib: float | None = Field(default=None, gt=0)
    # Skip CUDA-graph/compile capture: the engine loads in ~35 s instead of ~2 min on CPU,
    # at some cost in throughput.
    enforce_eager: bool = False
    cache: CacheMode = Field(
        default=CacheMode.OFF,
        description="The response cache (docs/cost-control.md): `exact` answers a request "
        "identical to an earlier one of the same tenant from the cache; `semantic` also one "
        "whose prompt means the same.",
    )
    cache_ttl_seconds: int = Field(
        default=86400, gt=0, description="How long a cached answer is kept, in seconds."
    )
    semantic_threshold: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description='`cache = "semantic"`: the cosine similarity a prompt needs to an '
        "earlier one to be answered with its answer.",
    )
    capabilities: tuple[str, ...] = Field(
        default=(),
        description="Tags a `[[routers]]` entry matches a request's `metadata.task` "
        'against, e.g. `["summarize", "code"]`.',
    )

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelEntry:
        if self.backend is Backend.VLLM:
            if not self.source:
                raise ValueError("backend 'vllm' needs 'source' (a directory or a built-in name)")
            if self.deployments:
                raise ValueError("backend 'vllm' has no [[models.deployments]]")
        elif self.deployments:
            flat = ("base_url", "api_key_env", "rpm", "tpm", "max_concurrency")
            clash = [name for name in flat if getattr(self, name) is not None]
            if clash:
                raise ValueError(
                    f"{', '.join(clash)}: set these on each [[models.deployments]] entry"
                )
        elif not self.base_url:
            raise ValueError(f"backend {self.backend.value!r} needs 'base_url'")
        if self.name in self.fallbacks or self.name in self.context_window_fallbacks:
            raise ValueError("a model cannot be its own fallback")
        return self

    def all_deployments(self) -> tuple[Deployment, ...]:
        """The deployments serving this model; the flat form is one."""
        return self._deployments

    @cached_property
    def _deployments(self) -> tuple[Deployment, ...]:
        if self.deployments:
            return tuple(
                d if d.name else d.model_copy(update={"name": f"{self.name}/{i}"})
                for i, d in enumerate(self.deployments)
            )
        if self.base_url is None:
            return ()
        return (
            Deployment(
                name=f"{self.name}/0",
                base_url=self.base_url,
                api_key_env=self.api_key_env,
                rpm=self.rpm,
                tpm=self.tpm,
                max_concurrency=self.max_concurrency,
            ),
        )

    @property
    def upstream_name(self) -> str:
        """The model name sent to the provider."""
        return self.upstream or self.name

    def api_key(self) -> str | None:
        """The provider key, read from the environment at call time (never stored)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """USD for one completion at this model's per-million-token prices."""
        total = prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        return (total / Decimal(1_000_000)).quantize(Decimal("1e-10"))


class RouterEntry(BaseModel):
    """One `[[routers]]` entry: a name clients send as `model`, resolved per request to
    one of its candidate models (promptq.router)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    candidates: tuple[str, ...] = Field(min_length=1)  # cheapest first
    strategy: Literal["cheapest_fit"] = "cheapest_fit"
    escalate_on: tuple[Literal["length", "error"], ...] = ()


@dataclass(frozen=True)
class Catalog(Mapping[str, ModelEntry]):
    """The models clients may use, by name, and the routers that pick among them."""

    entries: Mapping[str, ModelEntry]
    path: Path | None = None
    routers: Mapping[str, RouterEntry] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ModelEntry:
        return self.entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def require(self, name: object) -> ModelEntry:
        """The entry for `name`, or ModelNotFound (a 400 with code model_not_found)."""
        entry = self.entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ModelNotFound(str(name))
        return entry


def _entry_error(index: int, raw: Mapping[str, Any], exc: ValidationError) -> ConfigError:
    name = raw.get("name", "?")
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in exc.errors()
    )
    return ConfigError(f"models file: entry #{index + 1} ({name!r}): {problems}")


def parse_catalog(data: Mapping[str, Any], path: Path | None = None) -> Catalog:
    """Validate parsed TOML; errors name the bad entry and field."""
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError("models file: needs at least one [[models]] entry")
    entries: dict[str, ModelEntry] = {}
    for index, raw in enumerate(raw_models):
        if not isinstance(raw, dict):
            raise ConfigError(f"models file: entry #{index + 1} is not a table")
        try:
            entry = ModelEntry.model_validate(raw)
        except ValidationError as exc:
            raise _entry_error(index, raw, exc) from None
        if entry.name in entries:
            raise ConfigError(f"models file: entry #{index + 1}: duplicate name {entry.name!r}")
        entries[entry.name] = entry
    _check_fallbacks(entries)
    return Catalog(entries=entries, path=path, routers=_parse_routers(data, entries))


def _parse_routers(
    data: Mapping[str, Any], entries: Mapping[str, ModelEntry]
) -> dict[str, RouterEntry]:
    raw_routers = data.get("routers", [])
    if not isinstance(raw_routers, list):
        raise ConfigError("models file: 'routers' must be a list of [[routers]] tables")
    routers: dict[str, RouterEntry] = {}
    for index, raw in enumerate(raw_routers):
        where = f"models file: router #{index + 1} ({raw.get('name', '?')!r})"
        try:
            router = RouterEntry.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{where}: {problems}") from None
        if router.name in entries or router.name in routers:
            raise ConfigError(f"{where}: the name is already used by a model or router")
        unknown = [c for c in router.candidates if c not in entries]
        if unknown:
            raise ConfigError(f"{where}: unknown candidate model(s) {unknown}")
        # One worker runs the whole escalation chain: every candidate on the same queue.
        if any(entries[c].backend is Backend.VLLM for c in router.candidates):
            raise ConfigError(f"{where}: candidates must all be remote (openai/anthropic) models")
        routers[router.name] = router
    return routers


def _check_fallbacks(entries: Mapping[str, ModelEntry]) -> None:
    for entry in entries.values():
        for kind in ("fallbacks", "context_window_fallbacks"):
            missing = [name for name in getattr(entry, kind) if name not in entries]
            if missing:
                raise ConfigError(
                    f"models file: model {entry.name!r}: {kind} names unknown model(s) "
                    f"{', '.join(map(repr, missing))}"
                )


def load_catalog(path: Path | None) -> Catalog:
    """Read the models file at `path` (the bundled default when None)."""
    path = path or DEFAULT_MODELS_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"models file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"models file {path}: not valid TOML: {exc}") from None
    return parse_catalog(data, path)
