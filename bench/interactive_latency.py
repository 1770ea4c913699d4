"""Interactive latency behind a saturating batch: how long an interactive job takes on an
idle worker, and while a bulk batch keeps that worker full; the goal is at most 2x.

Remote mode (this script): the API, the scheduler and one `promptq worker remote` process
(`--concurrency` calls at once) against the simulated provider answering in
`--latency-ms` (2 s). First `--samples` interactive jobs one after another on the idle
worker; then a batch of `--batch-lines` lines that keeps every slot of the worker busy,
and the same number of interactive jobs while it runs. A job's latency is the client's
time from POST /v1/jobs to seeing it `succeeded` (polling every 20 ms).

    .venv/bin/python bench/interactive_latency.py [--samples 5] [--latency-ms 2000]

The GPU worker is measured the same way by its own bench (bench/gpu_throughput.py's
owner): a GPU mode would start `promptq worker gpu` with the small model in place of
`start_remote` and call `measure` unchanged, with a `--batch-lines` batch on that model.

Results: a table on stdout and bench/out/interactive_latency-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import (
    Child,
    api_client,
    create_batch,
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
from pipeline import spawn, start_api, start_redis, start_scheduler, start_worker

MODEL = "sim-slow"


@dataclass
class Services:
    """What the helpers of bench/pipeline.py expect (env, log_dir)."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, Child] = field(default_factory=dict)


@dataclass
class Stack:
    """A running deployment: its API client, the model to use, and how busy the provider is."""

    client: httpx.Client
    model: str
    in_flight: Callable[[], int]  # calls the provider is answering now


def latency(client: httpx.Client, model: str, n: int) -> float:
    """Seconds from POST /v1/jobs to seeing the interactive job succeeded."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"interactive sample {n}"}],
        "max_tokens": 8,
    }
    start = time.perf_counter()
    response = client.post("/v1/jobs", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            return time.perf_counter() - start
        if job["status"] not in ("queued", "running"):
            raise RuntimeError(f"interactive job ended {job['status']}: {job}")
        time.sleep(0.02)


def bulk_file(path: Path, model: str, lines: int) -> Path:
    with path.open("w") as out:
        for i in range(lines):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"bulk line {i}"}],
                "max_tokens": 8,
            }
            line = {"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")
    return path


def measure(stack: Stack, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Idle samples, then samples while a batch saturates the worker; any kind of worker."""
    idle = [latency(stack.client, stack.model, i) for i in range(args.samples)]
    path = bulk_file(work_dir / "bulk.jsonl", stack.model, args.batch_lines)
    file_id, _ = upload(stack.client, path)
    batch, _ = create_batch(stack.client, file_id)
    full = int(args.concurrency * 0.9)
    wait_until(lambda: stack.in_flight() >= full, 120, "the worker to be saturated")
    busy, in_flight = [], []
    for i in range(args.samples):
        in_flight.append(stack.in_flight())
        busy.append(latency(stack.client, stack.model, 100 + i))
    progress = stack.client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]
    stack.client.post(f"/v1/batches/{batch['id']}/cancel")
    ratio = statistics.median(busy) / statistics.median(idle)
    return {
        "idle_s": [round(x, 3) for x in idle],
        "saturated_s": [round(x, 3) for x in busy],
        "provider_in_flight_at_submission": in_flight,
        "batch_completed_while_sampling": progress["completed"],
        "idle_median_s": round(statistics.median(idle), 3),
        "saturated_median_s": round(statistics.median(busy), 3),
        "saturated_max_s": round(max(busy), 3),
        "ratio_median": round(ratio, 3),
    }


@contextmanager
def start_remote(args: argparse.Namespace, log_dir: Path, work_dir: Path) -> Iterator[Stack]:
    """A fresh deployment with one remote worker against a slow simulated provider."""
    with ExitStack() as stack:
        db_url = stack.enter_context(temp_database(prefix="bench_il"))
        _redis, redis_port = start_redis(stack, log_dir)
        sim_port = free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        sim_args = ["sim-provider", "--port", str(sim_port), "--latency-ms", str(args.latency_ms)]
        spawn(stack, Child.promptq("sim-il", sim_args, {}, log_dir))
        wait_http(f"{sim_url}/_sim/stats")
        models = work_dir / "models.toml"
        models.write_text(
            f'[[models]]\nname = "{MODEL}"\nbackend = "openai"\nbase_url = "{sim_url}/v1"\n'
        )
        env = {
            "PROMPTQ_DATABASE_URL": db_url,
            "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PROMPTQ_MODELS_FILE": str(models),
            "PROMPTQ_HOME": str(work_dir / "home"),
        }
        svc = Services(env, log_dir)
        _api, url = start_api(stack, svc, "api-il")  # type: ignore[arg-type]
        start_worker(stack, svc, args.concurrency, "worker-il")  # type: ignore[arg-type]
        start_scheduler(stack, svc)  # type: ignore[arg-type]

        def in_flight() -> int:
            calls = httpx.get(f"{sim_url}/_sim/calls", timeout=30).json()["calls"]
            return sum(1 for _, status, _ in calls if status == 0)

        with api_client(url, make_api_key(db_url, "bench-il")) as client:
            yield Stack(client, MODEL, in_flight)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=2000)
    parser.add_argument("--concurrency", type=int, default=64, help="of the worker process")
    parser.add_argument("--batch-lines", type=int, default=2000)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    raise_on_sigterm()
    out_dir = Path(__file__).parent / "out"
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-il-"))
    load_before = load_average()
    with start_remote(args, log_dir, work_dir) as stack:
        figures = measure(stack, args, work_dir)
    figures["load_average"] = [load_before, load_average()]
    for key, value in figures.items():
        print(f"{key}: {value}")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    result = {
        "mode": "remote",
        "args": vars(args),
        "machine": machine_info(),
        "source": source_state(Path(__file__).resolve().parent.parent),
        "figures": figures,
    }
    (out_dir / f"interactive_latency-{day}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
