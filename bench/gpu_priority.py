"""An interactive job's latency on the GPU worker, idle and behind a saturating bulk batch,
under each way of making room for it in the engine's running batch:

- `baseline`: neither (`interactive_slots = 0`, `preempt = false`): the job waits in
  vLLM's priority queue for a bulk sequence to end;
- `keep-free`: `interactive_slots = 2`, `preempt = false`: bulk work never takes the last
  two running slots;
- `preempt`: `interactive_slots = 0`, `preempt = true`: the job aborts the lowest-priority
  running bulk request, which runs again first in line;
- `both` (promptq's default): two kept-free slots, preemption when they are taken.

Per mode: a fresh database, a private Redis, `promptq api`, `promptq scheduler` and one
`promptq worker gpu`; after a warm-up job, `--samples` interactive jobs (`/v1/jobs`,
max_tokens 16, greedy) one after another on the idle worker, then a `--lines`-line batch
(max_tokens `--bulk-tokens`) and, once the engine runs `max_num_seqs` sequences, the same
jobs behind it. Latency is POST to `succeeded`, polled every 50 ms. The batch is cancelled
after the samples (it must still be running: a sample after it ends is reported).

    .venv/bin/python bench/gpu_priority.py [--modes baseline,keep-free,preempt] [--samples 4]

Results: a table on stdout and bench/out/gpu-priority-<date>.json; logs in
bench/out/logs-gpu-priority/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from common import (
    Child,
    api_client,
    free_port,
    load_average,
    machine_info,
    make_api_key,
    raise_on_sigterm,
    source_state,
    temp_database,
    upload,
    wait_http,
    wait_until,
)
from pipeline import spawn, start_redis

from promptq.constants import BROKER_EPOCH_KEY

MODEL = "bench-llm"
OUT_DIR = Path(__file__).resolve().parent / "out"
MODES = {  # name: (interactive_slots, preempt)
    "baseline": (0, False),
    "keep-free": (2, False),
    "preempt": (0, True),
    "both": (2, True),
}
INTERACTIVE = {
    "model": MODEL,
    "max_tokens": 16,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
}
POLL_S = 0.05


def models_toml(args: argparse.Namespace, mode: str) -> str:
    slots, preempt = MODES[mode]
    return "\n".join(
        [
            "[[models]]",
            f'name = "{MODEL}"',
            'backend = "vllm"',
            'source = "smollm2-135m"',
            f"max_num_seqs = {args.max_num_seqs}",
            "max_model_len = 1024",
            f"cpu_kvcache_gib = {args.kvcache_gib}",
            "enforce_eager = true",
            f"interactive_slots = {slots}",
            f"preempt = {'true' if preempt else 'false'}",
        ]
    )


def write_batch(path: Path, lines: int, max_tokens: int) -> None:
    with path.open("w") as fh:
        for i in range(lines):
            body = {
                "model": MODEL,
                "max_tokens": max_tokens,
                "temperature": 0,
                "messages": [
                    {"role": "user", "content": f"Write a long, detailed story about robot {i}."}
                ],
            }
            line = {"custom_id": f"b-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")


def metric(metrics_url: str, name: str, labels: str) -> float:
    """One sample of the worker's /metrics (0 when absent)."""
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def interactive_latency(client: httpx.Client, timeout: float = 300) -> tuple[float, float]:
    """Seconds from POST /v1/jobs to the job's `succeeded`, and its time to first token in
    the engine (from its submission to the engine)."""
    start = time.perf_counter()
    response = client.post("/v1/jobs", json=INTERACTIVE)
    response.raise_for_status()
    job_id = response.json()["id"]
    while time.perf_counter() - start < timeout:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            return time.perf_counter() - start, float(job["ttft_ms"] or 0) / 1000
        if job["status"] in ("failed", "cancelled", "expired"):
            raise RuntimeError(f"interactive job ended {job['status']}: {job}")
        time.sleep(POLL_S)
    raise RuntimeError("interactive job did not finish")


def run_mode(args: argparse.Namespace, mode: str, work: Path, log_dir: Path) -> dict[str, Any]:
    models_file = work / f"models-{mode}.toml"
    models_file.write_text(models_toml(args, mode) + "\n")
    batch_file = work / "batch.jsonl"
    write_batch(batch_file, args.lines, args.bulk_tokens)
    with ExitStack() as stack:
        db_url = stack.enter_context(temp_database(prefix="benchprio"))
        _, redis_port = start_redis(stack, log_dir)
        metrics_port = free_port()
        env = {
            "PROMPTQ_MODELS_FILE": str(models_file),
            "PROMPTQ_HOME": str(args.home),
            "PROMPTQ_LOG_LEVEL": "info",
            "PROMPTQ_DATABASE_URL": db_url,
            "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        }
        port = free_port()
        spawn(stack, Child.promptq(f"api-{mode}", ["api", "--port", str(port)], env, log_dir))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        spawn(stack, Child.promptq(f"scheduler-{mode}", ["scheduler"], env, log_dir))
        broker = redis.Redis(port=redis_port)
        wait_until(lambda: bool(broker.exists(BROKER_EPOCH_KEY)), 60, "the scheduler's first sweep")
        worker_args = ["worker", "gpu", "--model", MODEL, "--metrics-port", str(metrics_port)]
        worker = spawn(stack, Child.promptq(f"gpu-worker-{mode}", worker_args, env, log_dir))
        wait_until(
            lambda: "worker.ready" in worker.log_text() or not worker.alive(), 600, "GPU worker"
        )
        if not worker.alive():
            raise RuntimeError(f"the GPU worker exited:\n{worker.log_text()[-4000:]}")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        model = f'model="{MODEL}"'
        with api_client(url, make_api_key(db_url, "bench-prio")) as client:
            interactive_latency(client)  # warm-up: the engine's first request is slower
            idle_runs = [interactive_latency(client) for _ in range(args.samples)]
            file_id, _ = upload(client, batch_file)
            batch = client.post(
                "/v1/batches",
                json={
                    "input_file_id": file_id,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            ).json()
            wait_until(
                lambda: (
                    metric(metrics_url, "promptq_engine_requests", f'{model},state="running"')
                    >= args.max_num_seqs - MODES[mode][0]
                ),
                300,
                "the batch to fill the engine",
                interval=0.2,
            )
            load = load_average()
            behind_runs = []
            for _ in range(args.samples):
                time.sleep(1.0)  # let a preempted request get back in before the next job
                behind_runs.append(interactive_latency(client))
            state = client.get(f"/v1/batches/{batch['id']}").json()
            client.post(f"/v1/batches/{batch['id']}/cancel")
            preempted = metric(metrics_url, "promptq_preempted_total", model)
            wasted = metric(metrics_url, "promptq_preempted_tokens_total", model)
    idle, behind = [r[0] for r in idle_runs], [r[0] for r in behind_runs]
    median_idle = statistics.median(idle)
    return {
        "mode": mode,
        "interactive_slots": MODES[mode][0],
        "preempt": MODES[mode][1],
        "idle_s": [round(x, 3) for x in idle],
        "behind_s": [round(x, 3) for x in behind],
        "idle_ttft_s": [round(r[1], 3) for r in idle_runs],
        "behind_ttft_s": [round(r[1], 3) for r in behind_runs],
        "median_idle_s": round(median_idle, 3),
        "median_behind_s": round(statistics.median(behind), 3),
        "median_ratio": round(statistics.median(behind) / median_idle, 2),
        "worst_ratio": round(max(behind) / median_idle, 2),
        "batch_still_running": state["status"] == "in_progress",
        "bulk_completed_during_samples": state["request_counts"]["completed"],
        "preempted": int(preempted),
        "preempted_tokens": int(wasted),
        "load_1min_at_start": load,
    }


def print_summary(results: dict[str, Any]) -> None:
    header = f"{'mode':<10} {'idle s':>8} {'behind s':>9} {'ratio':>6} {'worst':>6} {'ttft s':>7}"
    print(f"\n{header} preempted")
    for run in results["runs"]:
        ttft = statistics.median(run["behind_ttft_s"])
        print(
            f"{run['mode']:<10} {run['median_idle_s']:>8} {run['median_behind_s']:>9} "
            f"{run['median_ratio']:>6} {run['worst_ratio']:>6} {ttft:>7.3f} "
            f"{run['preempted']} ({run['preempted_tokens']} tokens)"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="baseline,keep-free,preempt")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--bulk-tokens", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--kvcache-gib", type=float, default=2)
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "promptq")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    return args


def main() -> int:
    args = parse_args()
    raise_on_sigterm()
    log_dir = OUT_DIR / "logs-gpu-priority"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    day = datetime.now(UTC).date().isoformat()
    out = OUT_DIR / f"gpu-priority-{day}-{datetime.now(UTC):%H%M}.json"
    results: dict[str, Any] = {
        "date": day,
        "command": " ".join([".venv/bin/python", "bench/gpu_priority.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "source": source_state(OUT_DIR.parent.parent),
        "lines": args.lines,
        "bulk_max_tokens": args.bulk_tokens,
        "max_num_seqs": args.max_num_seqs,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="promptq-gpu-priority-") as tmp:
        for mode in args.modes.split(","):
            print(f"{mode}: interactive_slots, preempt = {MODES[mode]} ...", flush=True)
            results["runs"].append(run_mode(args, mode, Path(tmp), log_dir))
            out.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results)
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
