"""The CLI as a client: submit with --wait, status, results; keys create; secrets stay out;
expected failures are one line on stderr and a non-zero exit, tracebacks only with --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.acceptance.helpers import chat_line, write_jsonl
from tests.conftest import SIM_KEY, make_key
from tests.procs import free_port
from tests.stack import Stack


def promptq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptq", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptq: "), done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_help_reflows_docstrings_instead_of_breaking_them_where_the_source_does() -> None:
    done = promptq("demo", "--help", env={"COLUMNS": "200", "TERM": "dumb"})
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "on vLLM (on the GPU if there is one), and 200 news snippets" in text
    line = next(x for x in done.stdout.splitlines() if "An embedded Redis" in x)
    assert "if there is one" in line, done.stdout


def test_submit_wait_status_and_results(pipeline: str, api_key: str, tmp_path: Path) -> None:
    # Given a JSONL file whose lines name no model, and --model to fill it in
    lines = [chat_line(f"c-{i}", f"cli line {i}", model="placeholder") for i in range(20)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    env = {"PROMPTQ_API_URL": pipeline, "PROMPTQ_API_KEY": api_key}
    # When it is submitted with --wait --json
    done = promptq("submit", str(path), "--model", "sim-gpt", "--wait", "--json", env=env)
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    # Then the batch completed, status shows it, and results writes every line
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 20
    status = json.loads(promptq("status", batch["id"], "--json", env=env).stdout)
    assert status["id"] == batch["id"]
    out = tmp_path / "out.jsonl"
    written = promptq("results", batch["id"], "-o", str(out), env=env)
    assert written.returncode == 0, written.stderr
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == sorted(f"c-{i}" for i in range(20))


def test_submit_wait_ends_with_a_summary_and_fails_when_a_line_failed(
    pipeline: str, api_key: str, tmp_path: Path
) -> None:
    # Given a batch with two lines the provider refuses for good, and one bad line
    lines = [chat_line(f"ok-{i}", f"fine {i}") for i in range(6)]
    lines += [chat_line(f"bad-{i}", "[[sim:status=400]]") for i in range(2)]
    lines.append('{"custom_id": "broken", "method": "POST"')
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    env = {"PROMPTQ_API_URL": pipeline, "PROMPTQ_API_KEY": api_key, "COLUMNS": "80"}
    # When it is submitted with --wait
    done = promptq("submit", str(path), "--wait", env=env)
    # Then it exits non-zero with a human summary: counts, failures by code, tokens, cost
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "completed" in out.splitlines()[0], out
    assert "9 total: 6 succeeded, 3 failed" in out, out
    assert "failures   " in out and "invalid_json 1" in out, out
    assert "tokens     " in out and "cost       $" in out, out
    # Times are ISO 8601 in UTC, not epoch seconds
    created = next(line for line in out.splitlines() if line.strip().startswith("created"))
    assert created.split()[-1].endswith("Z") and "T" in created, created
    # And the progress bar went to stderr, with rate, ETA/elapsed and cost, within 80 columns
    bar = [line for line in done.stderr.splitlines() if "/9" in line]
    assert bar, done.stderr
    assert all(len(line) <= 80 for line in done.stderr.splitlines()), done.stderr
    assert "/s" in bar[-1] and "$" in bar[-1], bar[-1]


def test_status_of_a_job_is_a_summary(client: httpx.Client, pipeline: str, api_key: str) -> None:
    # Given a finished job
    job = client.post(
        "/v1/jobs", json={"model": "sim-gpt", "messages": [{"role": "user", "content": "hi"}]}
    ).json()
    env = {"PROMPTQ_API_URL": pipeline, "PROMPTQ_API_KEY": api_key}
    # When its status is shown
    done = promptq("status", job["id"], env=env)
    # Then it names the job, its model, tokens and cost, and no raw JSON
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(job["id"]) and "model sim-gpt" in done.stdout
    assert "tokens" in done.stdout and "{" not in done.stdout


def test_an_unreachable_api_is_one_line_and_debug_shows_the_traceback() -> None:
    env = {"PROMPTQ_API_URL": f"http://127.0.0.1:{free_port()}", "PROMPTQ_API_KEY": "k"}
    assert_one_line_error(promptq("status", "batch_x", env=env), "cannot reach", "127.0.0.1")
    debug = promptq("--debug", "status", "batch_x", env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "ConnectError" in debug.stderr


def test_a_refused_key_and_an_unknown_id_are_one_line(api_url: str, api_key: str) -> None:
    bad_key = {"PROMPTQ_API_URL": api_url, "PROMPTQ_API_KEY": "pq-not-a-key"}
    assert_one_line_error(promptq("status", "batch_nope", env=bad_key), "401", "PROMPTQ_API_KEY")
    good = {"PROMPTQ_API_URL": api_url, "PROMPTQ_API_KEY": api_key}
    assert_one_line_error(promptq("status", "batch_nope", env=good), "404")
    assert_one_line_error(promptq("results", "batch_nope", env=good), "404")


def test_a_missing_file_and_a_bad_models_file_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert_one_line_error(promptq("submit", str(missing), env={}), "no such file", str(missing))
    bad = tmp_path / "models.toml"
    bad.write_text('[[models]]\nname = "x"\n')
    done = promptq("worker", "remote", env={"PROMPTQ_MODELS_FILE": str(bad)})
    assert_one_line_error(done, "models file", "backend")
    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("[[models]\n")
    done = promptq("api", "--port", str(free_port()), env={"PROMPTQ_MODELS_FILE": str(not_toml)})
    assert_one_line_error(done, "not valid TOML")


def test_a_bad_setting_and_a_database_that_does_not_answer_are_one_line() -> None:
    done = promptq("scheduler", env={"PROMPTQ_CHUNK_SIZE": "lots"})
    assert_one_line_error(done, "PROMPTQ_CHUNK_SIZE")
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/promptq"
    done = promptq("keys", "create", "x", env={"PROMPTQ_DATABASE_URL": url})
    assert_one_line_error(done, "database", "PROMPTQ_DATABASE_URL")


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
