"""A vllm entry without cpu_kvcache_gib gets a KV cache that fits a shared CPU host, not
vLLM's 92% of the machine's memory."""

from __future__ import annotations

import pytest

from promptq.catalog import Backend, ModelEntry
from promptq.config import Settings
from promptq.workers.gpu_worker import _available_gib, default_cpu_kvcache_gib, engine_options


def _entry(**extra: object) -> ModelEntry:
    return ModelEntry.model_validate(
        {"name": "local", "backend": Backend.VLLM, "source": "org/not-a-local-dir", **extra}
    )


def test_an_entry_without_a_size_gets_a_bounded_share_of_available_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    size = engine_options(_entry(), Settings()).cpu_kvcache_gib
    available = _available_gib()
    assert size is not None and 0.5 <= size <= 4.0
    assert available is not None and size <= max(0.5, available / 4 + 0.25)


def test_an_explicit_size_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert engine_options(_entry(cpu_kvcache_gib=7), Settings()).cpu_kvcache_gib == 7


def test_the_operators_vllm_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert default_cpu_kvcache_gib() is None
    assert engine_options(_entry(), Settings()).cpu_kvcache_gib is None
