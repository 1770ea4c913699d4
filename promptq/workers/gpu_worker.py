"""The GPU worker: one long-lived vLLM engine per process, fed continuously from
micro-batches so that continuous batching always sees many requests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from promptq.catalog import Backend as BackendKind
from promptq.catalog import ModelEntry
from promptq.config import Settings
from promptq.errors import ConfigError
from promptq.workers.completion import Backend

if TYPE_CHECKING:
    from promptq.workers.vllm_engine import EngineOptions

__all__ = ["engine_options", "gpu_in_flight", "make_gpu_backend", "resolve_source"]


def resolve_source(entry: ModelEntry, settings: Settings) -> str:
    """The model directory: a path as given, or a built-in model converted once and cached."""
    from promptq.builtin_models import BUILTIN_MODELS, ensure_builtin_model

    source = entry.source or ""
    if source in BUILTIN_MODELS:
        return str(ensure_builtin_model(source, settings.home / "models"))
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    return source  # a Hugging Face id; vLLM resolves it (from its local cache offline)


def gpu_in_flight(entry: ModelEntry, chunk_size: int) -> int:
    """Requests to keep in the engine: every running slot filled, plus one chunk waiting in
    vLLM's priority queue so a slot never idles while the next message is fetched."""
    return entry.max_num_seqs + chunk_size


def engine_options(entry: ModelEntry, settings: Settings) -> EngineOptions:
    """The engine options of a models-file entry."""
    from promptq.builtin_models import BUILTIN_MODELS
    from promptq.workers.vllm_engine import EngineOptions

    dtype = entry.dtype
    builtin = BUILTIN_MODELS.get(entry.source or "")
    if dtype == "auto" and builtin is not None:
        dtype = builtin.dtype  # vLLM's "auto" would downcast the converted float32 weights
    return EngineOptions(
        model_path=resolve_source(entry, settings),
        max_model_len=entry.max_model_len,
        max_num_seqs=entry.max_num_seqs,
        dtype=dtype,
        gpu_memory_utilization=entry.gpu_memory_utilization,
        cpu_kvcache_gib=entry.cpu_kvcache_gib,
        enforce_eager=entry.enforce_eager,
    )


async def make_gpu_backend(entry: ModelEntry, settings: Settings) -> Backend:
    """Load the engine for `entry` in the running loop (once per worker process)."""
    if entry.backend is not BackendKind.VLLM:
        raise ConfigError(f"model {entry.name!r} is not a vllm model")
    from promptq.workers.vllm_engine import VllmEngine

    return await VllmEngine.start(engine_options(entry, settings))
