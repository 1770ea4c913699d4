"""The GPU worker: one long-lived vLLM engine per process, fed continuously from
micro-batches so that continuous batching always sees many requests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from promptq.catalog import Backend as BackendKind
from promptq.catalog import ModelEntry
from promptq.config import Settings
from promptq.errors import ConfigError
from promptq.workers.completion import Backend

if TYPE_CHECKING:
    from promptq.workers.vllm_engine import EngineOptions

__all__ = [
    "default_cpu_kvcache_gib",
    "engine_options",
    "gpu_in_flight",
    "make_gpu_backend",
    "resolve_source",
]

# Without a size, vLLM's CPU backend sizes its KV cache from gpu_memory_utilization (0.92)
# of the machine's memory, and the worker dies at start-up on a shared host. promptq asks
# for a quarter of the memory available now, within these bounds.
_CPU_KVCACHE_SHARE = 0.25
_CPU_KVCACHE_MIN_GIB = 0.5
_CPU_KVCACHE_MAX_GIB = 4.0


def _available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def default_cpu_kvcache_gib() -> float | None:
    """The KV cache size for a vllm entry that names none: None when the operator set
    VLLM_CPU_KVCACHE_SPACE (theirs wins), else a quarter of the available memory, kept
    between 0.5 and 4 GiB (4 GiB when the available memory cannot be read)."""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    available = _available_gib()
    if available is None:
        return _CPU_KVCACHE_MAX_GIB
    share = round(available * _CPU_KVCACHE_SHARE * 2) / 2  # in half GiB steps
    return max(_CPU_KVCACHE_MIN_GIB, min(_CPU_KVCACHE_MAX_GIB, share))


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
        # Used only on vLLM's CPU backend; a GPU sizes its cache by gpu_memory_utilization.
        cpu_kvcache_gib=entry.cpu_kvcache_gib or default_cpu_kvcache_gib(),
        enforce_eager=entry.enforce_eager,
        interactive_slots=entry.interactive_slots,
        preempt=entry.preempt,
    )


async def make_gpu_backend(entry: ModelEntry, settings: Settings) -> Backend:
    """Load the engine for `entry` in the running loop (once per worker process)."""
    if entry.backend is not BackendKind.VLLM:
        raise ConfigError(f"model {entry.name!r} is not a vllm model")
    from promptq.workers.vllm_engine import VllmEngine

    return await VllmEngine.start(engine_options(entry, settings))
