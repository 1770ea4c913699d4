"""`promptq demo`, the README's first command, end to end on a few documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_the_demo_runs_a_bulk_job_on_the_real_model_twice(tmp_path: Path) -> None:
    # Given no configuration but a home directory (the converted model is cached there)
    env = {**os.environ, "PROMPTQ_HOME": str(Path.home() / ".cache" / "promptq")}
    env = {k: v for k, v in env.items() if not k.startswith("PROMPTQ_") or k == "PROMPTQ_HOME"}
    for run in (1, 2):
        out = tmp_path / f"results-{run}.jsonl"
        # When the demo runs (twice: a second run must work as well)
        done = subprocess.run(
            [sys.executable, "-m", "promptq", "demo", "--documents", "6", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            cwd=tmp_path,
        )
        # Then it exits 0, prints its summary, and writes a result line per request
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "promptq demo finished" in done.stdout
        assert "12 total, 12 succeeded, 0 failed" in done.stdout
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(lines) == 12
        assert all(line["response"]["status_code"] == 200 for line in lines)
        summary = next(x for x in lines if x["custom_id"] == "doc-001:summary")
        assert summary["response"]["body"]["choices"][0]["message"]["content"].strip()
