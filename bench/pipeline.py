"""The pipeline benchmark, in one run against real services:

1. promptq end to end: a batch of N prompts through the API, the scheduler and one (or,
   with --workers, more) remote worker processes to the simulated provider at zero latency,
   until the batch is `completed`;
2. the baseline: the same prompts as one bare Celery task each (no database), on the same
   Redis server and simulated provider;
3. a large upload (POST /v1/files + POST /v1/batches) and the API process's peak memory.

    .venv/bin/python bench/pipeline.py [--prompts 10000] [--upload-lines 50000]

Results: a table on stdout and bench/out/pipeline-<date>.json; process logs in bench/out/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery, signals
from common import (
    Child,
    CpuMeter,
    api_client,
    count_lines,
    create_batch,
    free_port,
    load_average,
    machine_info,
    make_api_key,
    proc_status_kib,
    raise_on_sigterm,
    redis_args,
    source_state,
    temp_database,
    upload,
    wait_batch,
    wait_http,
    wait_until,
    wait_validated,
)

from promptq.constants import BROKER_EPOCH_KEY

MODEL = "sim-gpt"  # promptq's name for the model
UPSTREAM = "gpt-sim"  # the name the simulated provider is asked for
BASELINE_QUEUE = "bench-baseline"
BASELINE_TASK = "bench.baseline.complete"
DONE_KEY = "bench:baseline:done"
READY_KEY = "bench:baseline:ready"
OUT_DIR = Path(__file__).resolve().parent / "out"
MIB = 1024


# --- inputs ----------------------------------------------------------------------------------


def prompt_body(i: int, model: str, filler: str = "") -> dict[str, Any]:
    """One chat completion request; `filler` pads the message (the upload's big lines)."""
    text = f"Summarise document {i} in one sentence.{filler}"
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16}


def filler_text(chars: int) -> str:
    """About `chars` characters of plain words."""
    words = ["the", "quarterly", "report", "notes", "revenue", "growth", "across", "regions"]
    out: list[str] = []
    size = 0
    while size < chars:
        word = words[len(out) % len(words)]
        out.append(word)
        size += len(word) + 1
    return " " + " ".join(out)


def write_jsonl(path: Path, lines: int, filler: str = "") -> int:
    """An OpenAI batch input file of `lines` requests; returns its size in bytes."""
    with path.open("w") as fh:
        for i in range(lines):
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": prompt_body(i, MODEL, filler),
            }
            fh.write(json.dumps(line) + "\n")
    return path.stat().st_size


# --- services --------------------------------------------------------------------------------


@dataclass
class Services:
    """What every part shares: the database, the Redis server, the simulated provider."""

    db_url: str
    redis_port: int
    sim_url: str
    procs: dict[str, Child]
    env: dict[str, str]
    log_dir: Path
    work_dir: Path

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"


def spawn(stack: ExitStack, proc: Child) -> Child:
    """Register `proc` to be stopped when `stack` closes."""
    stack.callback(proc.stop)
    return proc


def start_redis(stack: ExitStack, log_dir: Path) -> tuple[Child, int]:
    port = free_port()
    proc = spawn(stack, Child("redis", redis_args(port), {}, log_dir))
    client = redis.Redis(port=port, socket_timeout=1)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(up, 15, "redis")
    return proc, port


def write_models_file(path: Path, sim_url: str) -> Path:
    path.write_text(
        f"""[[models]]
name = "{MODEL}"
backend = "openai"
base_url = "{sim_url}/v1"
upstream = "{UPSTREAM}"
input_per_mtok = 0.15
output_per_mtok = 0.60
"""
    )
    return path


def start_services(stack: ExitStack, log_dir: Path, work_dir: Path) -> Services:
    """A fresh database, a private redis-server and the simulated provider at zero latency."""
    db_url = stack.enter_context(temp_database())
    redis_proc, redis_port = start_redis(stack, log_dir)
    sim_port = free_port()
    sim_args = ["sim-provider", "--port", str(sim_port), "--latency-ms", "0"]
    sim = spawn(stack, Child.promptq("sim", sim_args, {}, log_dir))
    sim_url = f"http://127.0.0.1:{sim_port}"
    wait_http(f"{sim_url}/v1/models")
    env = {
        "PROMPTQ_DATABASE_URL": db_url,
        "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PROMPTQ_MODELS_FILE": str(write_models_file(work_dir / "models.toml", sim_url)),
        "PROMPTQ_HOME": str(work_dir / "home"),
        "PROMPTQ_LOG_LEVEL": "info",
    }
    procs = {"redis": redis_proc, "sim": sim}
    return Services(db_url, redis_port, sim_url, procs, env, log_dir, work_dir)


def start_api(stack: ExitStack, svc: Services, name: str) -> tuple[Child, str]:
    port = free_port()
    proc = spawn(stack, Child.promptq(name, ["api", "--port", str(port)], svc.env, svc.log_dir))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    return proc, url


def start_worker(stack: ExitStack, svc: Services, concurrency: int, name: str = "worker") -> Child:
    args = ["worker", "remote", "--concurrency", str(concurrency)]
    proc = spawn(stack, Child.promptq(name, args, svc.env, svc.log_dir))
    wait_until(lambda: "worker.ready" in proc.log_text() or not proc.alive(), 60, "worker")
    if not proc.alive():
        raise RuntimeError(f"the worker exited:\n{proc.log_text()}")
    return proc


# --- part 1: promptq end to end --------------------------------------------------------------


def start_scheduler(stack: ExitStack, svc: Services) -> Child:
    """The scheduler, returned after its first sweep (which marks the broker's epoch)."""
    proc = spawn(stack, Child.promptq("scheduler", ["scheduler"], svc.env, svc.log_dir))
    broker = redis.Redis.from_url(svc.env["PROMPTQ_REDIS_URL"])
    wait_until(lambda: bool(broker.exists(BROKER_EPOCH_KEY)) or not proc.alive(), 60, "scheduler")
    if not proc.alive():
        raise RuntimeError(f"the scheduler exited:\n{proc.log_text()}")
    return proc


def worker_names(workers: int) -> list[str]:
    """The names (and log files) of the promptq worker processes: worker, worker-2, ..."""
    return ["worker"] + [f"worker-{i}" for i in range(2, workers + 1)]


def run_promptq(
    svc: Services, prompts: int, concurrency: int, timeout: float, workers: int = 1
) -> dict[str, Any]:
    """API + `workers` remote worker processes + the scheduler: a batch of `prompts`,
    create to completed."""
    path = svc.work_dir / "e2e.jsonl"
    write_jsonl(path, prompts)
    with ExitStack() as stack:
        api, url = start_api(stack, svc, "api")
        procs = {"api": api}
        for name in worker_names(workers):
            procs[name] = start_worker(stack, svc, concurrency, name)
        procs["scheduler"] = start_scheduler(stack, svc)
        pids = ", ".join(f"{n} {p.pid}" for n, p in {**procs, **svc.procs}.items())
        print(f"  pids: {pids}", flush=True)
        with api_client(url, make_api_key(svc.db_url, "bench-e2e")) as client:
            file_id, upload_s = upload(client, path)
            load = load_average()
            meter = CpuMeter({**procs, **svc.procs})
            start = time.perf_counter()
            batch, create_s = create_batch(client, file_id)
            done = wait_batch(client, batch["id"], timeout, procs)
            elapsed = time.perf_counter() - start
            cpu = meter.used()
            output_lines = count_lines(client, done["output_file_id"] or "")
    counts = done["request_counts"]
    if done["status"] != "completed" or counts["completed"] != prompts or output_lines != prompts:
        raise RuntimeError(f"batch ended {done['status']} {counts}, {output_lines} output lines")
    worker_cpu = sum(cpu[name] for name in worker_names(workers))
    return {
        "prompts": prompts,
        "workers": workers,
        "worker_concurrency": concurrency,
        "upload_s": round(upload_s, 3),
        "create_s": round(create_s, 3),
        "create_to_completed_s": round(elapsed, 3),
        "prompts_per_s": round(prompts / elapsed, 1),
        "output_lines": output_lines,
        "load_1min_at_start": load,
        "cpu_s": cpu,
        "worker_cpu_ms_per_prompt": round(worker_cpu * 1000 / prompts, 2),
    }


# --- part 2: the bare Celery baseline --------------------------------------------------------


_clients: dict[int, tuple[httpx.Client, redis.Redis]] = {}
_clients_lock = threading.Lock()


def _worker_clients() -> tuple[httpx.Client, redis.Redis]:
    # One pooled client per process: prefork children make their own after the fork.
    pid = os.getpid()
    found = _clients.get(pid)
    if found is not None:
        return found
    with _clients_lock:
        if pid not in _clients:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
            http = httpx.Client(limits=limits, timeout=60)
            _clients[pid] = (http, redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]))
        return _clients[pid]


def baseline_task(body: dict[str, Any]) -> None:
    """POST one prompt to the simulated provider, then count it done."""
    http, counter = _worker_clients()
    url = f"{os.environ['BENCH_SIM_URL']}/v1/chat/completions"
    http.post(url, json=body).raise_for_status()
    counter.incr(DONE_KEY)


def baseline_app(redis_url: str) -> Celery:
    """A plain Celery app: Redis broker, JSON, no results, default acks and prefetch."""
    app = Celery("bench-baseline", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=BASELINE_QUEUE,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=BASELINE_TASK, ignore_result=True)(baseline_task)
    return app


def baseline_worker_main(pool: str, concurrency: int) -> None:
    """The baseline worker process (this script with --baseline-worker)."""
    redis_url = os.environ["BENCH_REDIS_URL"]
    app = baseline_app(redis_url)

    def _ready(**_: Any) -> None:
        redis.Redis.from_url(redis_url).set(READY_KEY, 1)

    signals.worker_ready.connect(_ready, weak=False)
    app.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--queues={BASELINE_QUEUE}",
            "--loglevel=warning",
            "--hostname=baseline@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def start_baseline_worker(stack: ExitStack, svc: Services, pool: str, concurrency: int) -> Child:
    counter = redis.Redis.from_url(svc.redis_url(1))
    counter.delete(READY_KEY, DONE_KEY)
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--baseline-worker",
        "--baseline-pool",
        pool,
        "--baseline-concurrency",
        str(concurrency),
    ]
    env = {"BENCH_REDIS_URL": svc.redis_url(1), "BENCH_SIM_URL": svc.sim_url}
    proc = spawn(stack, Child(f"baseline-{pool}-{concurrency}", args, env, svc.log_dir))
    wait_until(lambda: bool(counter.exists(READY_KEY)) or not proc.alive(), 60, "baseline worker")
    if not proc.alive():
        raise RuntimeError(f"the baseline worker exited:\n{proc.log_text()}")
    return proc


def send_baseline(app: Celery, prompts: int) -> float:
    """One task per prompt, in order; returns the seconds the sending took."""
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(prompts):
            app.send_task(
                BASELINE_TASK,
                args=[prompt_body(i, UPSTREAM)],
                queue=BASELINE_QUEUE,
                producer=producer,
            )
    return time.perf_counter() - start


def run_baseline(svc: Services, prompts: int, pool: str, concurrency: int) -> dict[str, Any]:
    """Bare Celery: time from the first send until every task has run."""
    counter = redis.Redis.from_url(svc.redis_url(1))
    app = baseline_app(svc.redis_url(1))
    with ExitStack() as stack:
        worker = start_baseline_worker(stack, svc, pool, concurrency)
        load = load_average()
        meter = CpuMeter({"worker": worker, **svc.procs})
        start = time.perf_counter()
        send_s = send_baseline(app, prompts)
        wait_until(
            lambda: int(counter.get(DONE_KEY) or 0) >= prompts, 600, "baseline", interval=0.02
        )
        elapsed = time.perf_counter() - start
        cpu = meter.used()
    return {
        "pool": pool,
        "concurrency": concurrency,
        "prompts": prompts,
        "send_s": round(send_s, 3),
        "first_send_to_all_done_s": round(elapsed, 3),
        "prompts_per_s": round(prompts / elapsed, 1),
        "load_1min_at_start": load,
        "cpu_s": cpu,
        "worker_cpu_ms_per_prompt": round(cpu["worker"] * 1000 / prompts, 2),
    }


# --- part 3: a large upload ------------------------------------------------------------------


def run_upload(svc: Services, lines: int, line_chars: int) -> dict[str, Any]:
    """POST /v1/files + POST /v1/batches of a large file to a fresh API; its RSS and peak."""
    path = svc.work_dir / "upload.jsonl"
    size = write_jsonl(path, lines, filler_text(line_chars))
    with ExitStack() as stack:
        api, url = start_api(stack, svc, "api-upload")
        with api_client(url, make_api_key(svc.db_url, "bench-upload")) as client:
            client.get("/v1/batches", params={"limit": 1}).raise_for_status()  # warm up
            rss_before = proc_status_kib(api.pid, "VmRSS")
            meter = CpuMeter({"api": api, "redis": svc.procs["redis"]})
            file_id, upload_s = upload(client, path)
            hwm_upload = proc_status_kib(api.pid, "VmHWM")
            batch, create_s = create_batch(client, file_id)
            created_status = batch["status"]
            batch, validate_s = wait_validated(client, batch["id"])
            hwm_create = proc_status_kib(api.pid, "VmHWM")
            rss_after = proc_status_kib(api.pid, "VmRSS")
            cpu = meter.used()
            client.post(f"/v1/batches/{batch['id']}/cancel").raise_for_status()
    if batch["request_counts"]["total"] != lines:
        raise RuntimeError(f"the batch has {batch['request_counts']} for {lines} lines")
    total_s = upload_s + create_s
    return {
        "lines": lines,
        "bytes": size,
        "upload_s": round(upload_s, 3),
        "create_s": round(create_s, 3),
        "created_status": created_status,
        "validate_s": round(validate_s, 3),
        "lines_per_s": round(lines / total_s, 1),
        "mb_per_s": round(size / 1e6 / total_s, 2),
        "api_rss_before_mib": round(rss_before / MIB, 1),
        "api_peak_rss_after_upload_mib": round(hwm_upload / MIB, 1),
        "api_peak_rss_after_create_mib": round(hwm_create / MIB, 1),
        "api_rss_after_mib": round(rss_after / MIB, 1),
        "cpu_s": cpu,
    }


# --- the run ---------------------------------------------------------------------------------


def parse_baseline(spec: str) -> tuple[str, int]:
    pool, _, concurrency = spec.partition(":")
    if pool not in ("threads", "prefork", "solo") or not concurrency.isdigit():
        raise argparse.ArgumentTypeError(f"{spec!r} is not POOL:CONCURRENCY, e.g. threads:64")
    return pool, int(concurrency)


PARTS = ("e2e", "baseline", "upload")


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(PARTS)}")
    return parts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--upload-lines", type=int, default=50_000)
    parser.add_argument("--line-chars", type=int, default=2000, help="message size, upload")
    parser.add_argument("--concurrency", type=int, default=256, help="per promptq worker")
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        help="promptq remote worker processes (repeatable: one end-to-end run each); default 1",
    )
    parser.add_argument(
        "--baseline",
        type=parse_baseline,
        action="append",
        help="POOL:CONCURRENCY of a baseline worker (repeatable; the fastest is compared); "
        "default threads:64 and prefork:2",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate e2e and baseline runs; best is compared"
    )
    parser.add_argument(
        "--parts", type=parse_parts, default=list(PARTS), help="e2e,baseline,upload"
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-pool", default="threads", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-concurrency", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.baseline = args.baseline or [("threads", 64), ("prefork", 2)]
    args.workers = args.workers or [1]
    return args


def run_throughput(args: argparse.Namespace, svc: Services, results: dict[str, Any]) -> None:
    """`rounds` alternations of promptq and every baseline, on the same services."""
    results["promptq_runs"], results["baselines"] = [], []
    for round_no in range(1, args.rounds + 1):
        for workers in args.workers if "e2e" in args.parts else []:
            print(
                f"[{round_no}] promptq end to end, {workers} worker process(es), "
                f"{args.prompts} prompts ...",
                flush=True,
            )
            run = run_promptq(svc, args.prompts, args.concurrency, args.timeout, workers)
            results["promptq_runs"].append(run)
        for pool, concurrency in args.baseline if "baseline" in args.parts else []:
            print(f"[{round_no}] bare Celery {pool}:{concurrency} ...", flush=True)
            results["baselines"].append(run_baseline(svc, args.prompts, pool, concurrency))


def _ratio(mine: Mapping[str, Any], best: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "workers": mine["workers"],
        "promptq_prompts_per_s": mine["prompts_per_s"],
        "baseline": f"bare Celery {best['pool']}:{best['concurrency']}",
        "baseline_prompts_per_s": best["prompts_per_s"],
        "ratio": round(mine["prompts_per_s"] / best["prompts_per_s"], 3),
        "worker_cpu_per_prompt_ratio": round(
            mine["worker_cpu_ms_per_prompt"] / best["worker_cpu_ms_per_prompt"], 2
        ),
    }


def compare(results: dict[str, Any]) -> None:
    """The best promptq run (and the best of each worker count) against the best baseline."""
    runs = results["promptq_runs"]
    if not runs or not results["baselines"]:
        return
    best = max(results["baselines"], key=lambda b: b["prompts_per_s"])
    results["comparison"] = _ratio(max(runs, key=lambda r: r["prompts_per_s"]), best)
    counts = sorted({r["workers"] for r in runs})
    results["comparison_by_workers"] = [
        _ratio(max((r for r in runs if r["workers"] == n), key=lambda r: r["prompts_per_s"]), best)
        for n in counts
    ]


def run_all(args: argparse.Namespace, log_dir: Path, work_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "command": " ".join([".venv/bin/python", "bench/pipeline.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "source": source_state(OUT_DIR.parent.parent),
        "prompts": args.prompts,
    }
    with ExitStack() as stack:
        svc = start_services(stack, log_dir, work_dir)
        run_throughput(args, svc, results)
        if "upload" in args.parts:
            print(f"upload of {args.upload_lines} lines ...", flush=True)
            results["upload"] = run_upload(svc, args.upload_lines, args.line_chars)
    compare(results)
    return results


def _cpu_line(cpu: Mapping[str, float], seconds: float) -> str:
    return ", ".join(f"{name} {used:.1f}s ({used / seconds:.0%})" for name, used in cpu.items())


def _throughput_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for p in results["promptq_runs"]:
        wall = p["create_to_completed_s"]
        name = f"promptq end to end, {p.get('workers', 1)} worker process(es)"
        rows.append((name, f"{p['prompts_per_s']:.0f} prompts/s ({wall:.2f} s)"))
        rows.append(("  upload, create", f"{p['upload_s']:.2f} s, {p['create_s']:.2f} s"))
        rows.append(("  CPU (share of wall)", _cpu_line(p["cpu_s"], wall)))
        rows.append(("  worker CPU per prompt", f"{p['worker_cpu_ms_per_prompt']:.2f} ms"))
    for b in results["baselines"]:
        wall = b["first_send_to_all_done_s"]
        figure = f"{b['prompts_per_s']:.0f} prompts/s ({wall:.2f} s, sending {b['send_s']:.2f} s)"
        rows.append((f"bare Celery {b['pool']}:{b['concurrency']}", figure))
        rows.append(("  CPU (share of wall)", _cpu_line(b["cpu_s"], wall)))
        rows.append(("  worker CPU per prompt", f"{b['worker_cpu_ms_per_prompt']:.2f} ms"))
    for c in results.get("comparison_by_workers", []):
        name = f"promptq ({c['workers']} worker process(es)) / {c['baseline']}"
        rows.append((name, f"{c['ratio']:.2f} (throughput, best runs)"))
        rows.append(("  worker CPU per prompt", f"{c['worker_cpu_per_prompt_ratio']:.2f} x"))
    return rows


def _upload_rows(u: Mapping[str, Any]) -> list[tuple[str, str]]:
    size = f"{u['lines']} lines, {u['bytes'] / 1e6:.0f} MB"
    return [
        ("upload + create", f"{u['lines_per_s']:.0f} lines/s ({size}, {u['mb_per_s']} MB/s)"),
        ("  upload, create", f"{u['upload_s']:.2f} s, {u['create_s']:.2f} s"),
        (
            "  validation after create",
            f"{u.get('validate_s', 0):.2f} s (answered {u.get('created_status', '?')})",
        ),
        ("  CPU (share of wall)", _cpu_line(u["cpu_s"], u["upload_s"] + u["create_s"])),
        ("  API RSS before", f"{u['api_rss_before_mib']:.0f} MiB"),
        (
            "  API peak RSS (VmHWM)",
            f"{u['api_peak_rss_after_upload_mib']:.0f} MiB after upload, "
            f"{u['api_peak_rss_after_create_mib']:.0f} MiB after create",
        ),
    ]


def print_summary(results: Mapping[str, Any]) -> None:
    """A two-column table of the figures."""
    rows = _throughput_rows(results)
    if "upload" in results:
        rows += _upload_rows(results["upload"])
    width = max(len(name) for name, _ in rows)
    m = results["machine"]
    print(
        f"\n{results['prompts']} prompts, simulated provider at 0 ms, "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {results['date']}, {results['source']}"
    )
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _out_path(day: str) -> Path:
    """bench/out/pipeline-<date>.json, or -2, -3 ... for later runs the same day."""
    out, n = OUT_DIR / f"pipeline-{day}.json", 1
    while out.exists():
        n += 1
        out = OUT_DIR / f"pipeline-{day}-{n}.json"
    return out


def main() -> int:
    args = parse_args()
    if args.baseline_worker:
        baseline_worker_main(args.baseline_pool, args.baseline_concurrency)
        return 0
    raise_on_sigterm()
    log_dir = OUT_DIR / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="promptq-bench-") as tmp:
        results = run_all(args, log_dir, Path(tmp))
    print_summary(results)
    out = _out_path(results["date"])
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
