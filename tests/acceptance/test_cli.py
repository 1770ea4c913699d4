"""The CLI as a client: submit with --wait, status, results; keys create; secrets stay out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.acceptance.helpers import chat_line, write_jsonl
from tests.conftest import SIM_KEY, make_key
from tests.stack import Stack


def promptq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "promptq", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_submit_wait_status_and_results(pipeline: str, api_key: str, tmp_path: Path) -> None:
    # Given a JSONL file whose lines name no model, and --model to fill it in
    lines = [chat_line(f"c-{i}", f"cli line {i}", model="placeholder") for i in range(20)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    env = {"PROMPTQ_API_URL": pipeline, "PROMPTQ_API_KEY": api_key}
    # When it is submitted with --wait
    done = promptq("submit", str(path), "--model", "sim-gpt", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    # Then the batch completed, status shows it, and results writes every line
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 20
    status = json.loads(promptq("status", batch["id"], env=env).stdout)
    assert status["id"] == batch["id"]
    out = tmp_path / "out.jsonl"
    written = promptq("results", batch["id"], "-o", str(out), env=env)
    assert written.returncode == 0, written.stderr
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == sorted(f"c-{i}" for i in range(20))


def test_keys_create_prints_a_working_key(env: dict[str, str], api_url: str) -> None:
    made = promptq("keys", "create", "cli-team", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    response = httpx.get(f"{api_url}/v1/batches", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_an_admin_key_sees_every_tenant(
    client: httpx.Client, api_url: str, pg_url: str, tmp_path: Path
) -> None:
    from tests.acceptance.helpers import upload_and_run

    batch = upload_and_run(client, write_jsonl(tmp_path / "a.jsonl", [chat_line("a", "b")]))
    admin = {"Authorization": f"Bearer {make_key(pg_url, 'ops', admin=True)}"}
    assert httpx.get(f"{api_url}/v1/batches/{batch['id']}", headers=admin).status_code == 200


def test_provider_keys_never_leave_the_environment(
    client: httpx.Client, pipeline: str, stack: Stack
) -> None:
    # Given jobs that succeed and jobs the provider refuses
    for text in ("fine", "[[sim:status=401]]", "[[sim:status=500]] [[sim:fail=500x1]]"):
        client.post(
            "/v1/jobs", json={"model": "sim-gpt", "messages": [{"role": "user", "content": text}]}
        )
    # Then the provider key appears in no response and no log line of any process
    assert SIM_KEY not in client.get("/v1/models").text
    assert SIM_KEY not in client.get("/openapi.json").text
    for child in stack.children:
        assert SIM_KEY not in child.log_text(), child.name


def test_worker_check_sees_the_live_remote_worker_and_no_gpu_worker(
    pipeline: str, env: dict[str, str]
) -> None:
    # Given the deployment's remote worker is running (and no GPU worker)
    # When a health probe asks for each kind
    remote = promptq("worker", "remote", "--check", env=env)
    gpu = promptq("worker", "gpu", "--check", env=env)
    # Then only the remote kind is alive, with its counters shown
    assert remote.returncode == 0, remote.stderr
    assert "remote@" in remote.stdout and "claimed=" in remote.stdout
    assert gpu.returncode == 1 and "no live gpu worker" in gpu.stderr


def test_a_burst_worker_exits_once_nothing_is_queued(pipeline: str, env: dict[str, str]) -> None:
    # When a remote worker runs in burst mode while nothing is queued for it
    burst = promptq("worker", "remote", "--burst", env=env)
    # Then it stops by itself, cleanly, with its counters logged
    assert burst.returncode == 0, burst.stderr
    assert "worker.burst_done" in burst.stderr and "worker.stopped" in burst.stderr
