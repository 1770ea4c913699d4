"""The install needs no compiler: every package bootstrap installs, on a CPU host and on an
NVIDIA host, resolves to a wheel on the package index (pip --dry-run, nothing installed)
with no gcc/cc/c++ on PATH."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_bootstrap import plan


@pytest.fixture(scope="module")
def empty_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    return venv


@pytest.mark.parametrize("nvidia_smi", ['echo "GPU 0: NVIDIA L4"', "exit 9"])
def test_every_package_of_the_install_is_a_wheel(
    tmp_path: Path, empty_venv: Path, nvidia_smi: str
) -> None:
    # Given bootstrap's plan for this kind of host
    got = plan(tmp_path, nvidia_smi, PROMPTQ_VENV=str(empty_venv))
    installs = [shlex.split(s) for s in got["run"] if " install " in s and "--upgrade" not in s]
    assert len(installs) == 2, got["run"]  # promptq with its extras, then the demo model
    for argv in installs:
        # When pip resolves the step with no compiler reachable (PATH holds the venv alone)
        done = subprocess.run(
            [*argv, "--dry-run", "--ignore-installed", "--quiet", "--progress-bar", "off"],
            capture_output=True,
            text=True,
            timeout=600,
            env={"PATH": str(empty_venv / "bin"), "HOME": str(Path.home())},
        )
        # Then every requirement has a wheel (with --only-binary=:all: an sdist is an error)
        assert done.returncode == 0, done.stderr[-3000:]
