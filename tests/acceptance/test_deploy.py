"""What users deploy: docker-compose's commands exist, and Flower shows a live worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.procs import Child, free_port, wait_for, wait_http

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_every_part_with_commands_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "redis",
        "api",
        "worker-remote",
        "worker-gpu",
        "scheduler",
        "flower",
    } <= set(services)
    for name, service in services.items():
        if service.get("image", "").startswith("promptq") and name != "flower":
            command = [c for c in service["command"] if not c.startswith("--")]
            args = [sys.executable, "-m", "promptq", *command[:2], "--help"]
            done = subprocess.run(args, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (name, done.stderr)


def test_flower_lists_the_live_worker(
    remote_worker: Child, env: dict[str, str], log_dir: Path
) -> None:
    # Given Flower on the broker the workers use
    port = free_port()
    flower = Child(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            f"--broker={env['PROMPTQ_REDIS_URL']}",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--basic-auth=ops:secret",
        ],
        {},
        log_dir,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthcheck", timeout=60)

        # When it has heard from the workers
        def listed() -> bool:
            workers = httpx.get(
                f"http://127.0.0.1:{port}/api/workers",
                params={"refresh": "1"},
                auth=("ops", "secret"),
                timeout=10,
            ).json()
            return any(name.startswith("remote@") for name in workers)

        # Then the promptq remote worker is listed
        wait_for(listed, 60, "flower to list the worker", interval=1)
    finally:
        flower.stop()
