"""The cost-control benchmark, in one run against real services (bench/pipeline.py's setup:
a fresh database, a private Redis, the simulated provider at zero latency, the API, the
scheduler and remote worker processes):

1. cache: a batch of N lines of which 30% repeat an earlier line's prompt, on a model with
   the cache off and on: upstream calls, cost, seconds; then the same file again (cache on);
2. overhead: N distinct prompts (pipeline.py's batch) as they run plain, with a budget on
   the key (a reservation and a settlement per job), with the exact cache on (a look-up and
   a store per job), and with both; prompts/s of each against plain;
3. budget: a key whose budget pays for about a third of a batch, with two workers: spend
   against the budget, and what is left reserved.

    .venv/bin/python bench/cost.py [--lines 10000] [--rounds 1]

Results: a table on stdout and bench/out/cost-<date>.json; process logs in bench/out/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from common import (
    Child,
    CpuMeter,
    api_client,
    create_batch,
    free_port,
    machine_info,
    make_api_key,
    raise_on_sigterm,
    source_state,
    temp_database,
    upload,
    wait_batch,
    wait_http,
)
from pipeline import (
    Services,
    spawn,
    start_api,
    start_redis,
    start_scheduler,
    start_worker,
    worker_names,
)

from promptq.db import create_sync_engine

OUT_DIR = Path(__file__).resolve().parent / "out"
PRICES = "input_per_mtok = 0.15\noutput_per_mtok = 0.60"


def write_models(path: Path, sim_url: str) -> Path:
    entry = '[[models]]\nname = "{}"\nbackend = "openai"\nbase_url = "{}/v1"\n{}\n{}\n'
    path.write_text(
        entry.format("plain", sim_url, PRICES, "")
        + entry.format("cached", sim_url, PRICES, 'cache = "exact"')
    )
    return path


def start_services(stack: ExitStack, log_dir: Path, work_dir: Path) -> Services:
    db_url = stack.enter_context(temp_database(prefix="bench_cost"))
    redis_proc, redis_port = start_redis(stack, log_dir)
    sim_port = free_port()
    sim = spawn(stack, Child.promptq("sim", ["sim-provider", "--port", str(sim_port)], {}, log_dir))
    sim_url = f"http://127.0.0.1:{sim_port}"
    wait_http(f"{sim_url}/v1/models")
    env = {
        "PROMPTQ_DATABASE_URL": db_url,
        "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PROMPTQ_MODELS_FILE": str(write_models(work_dir / "models.toml", sim_url)),
        "PROMPTQ_HOME": str(work_dir / "home"),
        "PROMPTQ_LOG_LEVEL": "info",
    }
    return Services(
        db_url, redis_port, sim_url, {"redis": redis_proc, "sim": sim}, env, log_dir, work_dir
    )


def write_lines(path: Path, model: str, prompts: list[int]) -> Path:
    with path.open("w") as fh:
        for i, p in enumerate(prompts):
            body = {
                "model": model,
                "messages": [
                    {"role": "user", "content": f"Summarise document {p} in one sentence."}
                ],
                "max_tokens": 16,
            }
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            fh.write(json.dumps(line) + "\n")
    return path


def duplicated(lines: int, share: float) -> list[int]:
    """Prompt numbers for `lines` lines of which `share` repeat an earlier line's prompt."""
    distinct = round(lines * (1 - share))
    return list(range(distinct)) + [i % distinct for i in range(lines - distinct)]


def upstream_calls(svc: Services) -> int:
    stats = httpx.get(f"{svc.sim_url}/_sim/stats").json()
    return int(stats["by_endpoint"].get("/v1/chat/completions", 0))


def set_budget(svc: Services, key_name: str, usd: Decimal) -> None:
    engine = create_sync_engine(svc.db_url)
    with engine.connect() as conn:
        key_id = conn.execute(
            sa.text("SELECT id FROM api_keys WHERE name = :n"), {"n": key_name}
        ).scalar()
    engine.dispose()
    cmd = ["keys", "budget", str(key_id), "--budget-usd", str(usd), "--budget-period", "day"]
    env = {**os.environ, **svc.env}
    subprocess.run([sys.executable, "-m", "promptq", *cmd], env=env, check=True, timeout=60)


def run_batch(
    svc: Services, url: str, key: str, path: Path, procs: dict[str, Child]
) -> dict[str, Any]:
    with api_client(url, key) as client:
        file_id, _ = upload(client, path)
        before = upstream_calls(svc)
        meter = CpuMeter({**svc.procs, **procs})
        start = time.perf_counter()
        batch, _ = create_batch(client, file_id)
        done = wait_batch(client, batch["id"], 900, procs)
        elapsed = time.perf_counter() - start
        cpu = meter.used()
    lines = done["request_counts"]["total"]
    return {
        "lines": lines,
        "completed": done["request_counts"]["completed"],
        "failed": done["request_counts"]["failed"],
        "upstream_calls": upstream_calls(svc) - before,
        "cost_usd": done["cost_usd"],
        "estimated_cost_usd": done.get("estimated_cost_usd"),
        "seconds": round(elapsed, 3),
        "prompts_per_s": round(lines / elapsed, 1),
        "worker_cpu_ms_per_prompt": round(
            sum(v for k, v in cpu.items() if k.startswith("worker")) * 1000 / lines, 2
        ),
        "cpu_ms_per_prompt": {k: round(v * 1000 / lines, 3) for k, v in cpu.items()},
        "batch_id": done["id"],
    }


def deployment(
    stack: ExitStack, svc: Services, workers: int, concurrency: int
) -> tuple[str, dict[str, Child]]:
    api, url = start_api(stack, svc, "api")
    procs = {"api": api}
    for name in worker_names(workers):
        procs[name] = start_worker(stack, svc, concurrency, name)
    procs["scheduler"] = start_scheduler(stack, svc)
    return url, procs


def part_cache(svc: Services, lines: int, concurrency: int) -> dict[str, Any]:
    prompts = duplicated(lines, 0.3)
    out: dict[str, Any] = {"lines": lines, "duplicate_share": 0.3, "distinct": len(set(prompts))}
    with ExitStack() as stack:
        url, procs = deployment(stack, svc, 1, concurrency)
        key = make_api_key(svc.db_url, "bench-cache")
        for name, model in (
            ("cache_off", "plain"),
            ("cache_on", "cached"),
            ("cache_on_rerun", "cached"),
        ):
            print(f"cache: {name} ...", flush=True)
            path = write_lines(svc.work_dir / f"{model}.jsonl", model, prompts)
            out[name] = run_batch(svc, url, key, path, procs)
    return out


def part_overhead(svc: Services, lines: int, concurrency: int, rounds: int) -> dict[str, Any]:
    prompts = list(range(lines))
    runs: dict[str, list[dict[str, Any]]] = {
        "plain": [],
        "budget": [],
        "cache": [],
        "budget_and_cache": [],
    }
    with ExitStack() as stack:
        url, procs = deployment(stack, svc, 1, concurrency)
        free_key = make_api_key(svc.db_url, "bench-free")
        budget_key = make_api_key(svc.db_url, "bench-budget")
        set_budget(svc, "bench-budget", Decimal(1000))
        for r in range(rounds):
            for name, key, model in (
                ("plain", free_key, "plain"),
                ("budget", budget_key, "plain"),
                ("cache", free_key, "cached"),
                ("budget_and_cache", budget_key, "cached"),
            ):
                print(f"[{r + 1}] overhead: {name} ...", flush=True)
                # Distinct prompts per run: the cache runs must miss, as in production.
                offset = (r * 4 + len(runs[name])) * lines * 10
                path = write_lines(svc.work_dir / "o.jsonl", model, [p + offset for p in prompts])
                runs[name].append(run_batch(svc, url, key, path, procs))
    best = {name: max(rs, key=lambda x: x["prompts_per_s"]) for name, rs in runs.items()}
    plain = best["plain"]["prompts_per_s"]
    return {
        "lines": lines,
        "runs": runs,
        "best_prompts_per_s": {n: b["prompts_per_s"] for n, b in best.items()},
        "overhead_vs_plain": {n: round(1 - b["prompts_per_s"] / plain, 3) for n, b in best.items()},
    }


def part_budget(svc: Services, lines: int, concurrency: int) -> dict[str, Any]:
    with ExitStack() as stack:
        url, procs = deployment(stack, svc, 2, concurrency)
        key = make_api_key(svc.db_url, "bench-capped")
        per_line = (Decimal(10) * Decimal("0.15") + 16 * Decimal("0.60")) / 1_000_000
        budget = (per_line * lines / 3).quantize(Decimal("1e-10"))
        set_budget(svc, "bench-capped", budget)
        path = write_lines(svc.work_dir / "b.jsonl", "plain", list(range(lines)))
        print("budget: two workers ...", flush=True)
        run = run_batch(svc, url, key, path, procs)
    engine = create_sync_engine(svc.db_url)
    with engine.connect() as conn:
        spent, reserved = conn.execute(
            sa.text(
                "SELECT spent_usd, reserved_usd FROM budgets b"
                " JOIN api_keys k ON k.id = b.api_key_id WHERE k.name = 'bench-capped'"
            )
        ).one()
        jobs_sum = conn.execute(
            sa.text("SELECT coalesce(sum(cost_usd), 0) FROM jobs WHERE batch_id = :b"),
            {"b": run["batch_id"]},
        ).scalar()
    engine.dispose()
    return {
        **run,
        "budget_usd": str(budget),
        "spent_usd": str(spent),
        "jobs_cost_sum_usd": str(jobs_sum),
        "reserved_after_usd": str(reserved),
        "spent_share_of_budget": round(float(Decimal(spent) / budget), 4),
        "over_budget_usd": str(max(Decimal(0), Decimal(spent) - budget)),
    }


def print_summary(results: dict[str, Any]) -> None:
    print(f"\n{results['date']}, {results['source']}, {results['machine']['nproc']} CPUs")
    if "cache" in results:
        print_cache(results["cache"])
    if "overhead" in results:
        print_overhead(results["overhead"])
    if "budget" in results:
        print_budget(results["budget"])


def print_cache(c: dict[str, Any]) -> None:
    rows = [
        (f"cache off, {c['lines']} lines ({c['distinct']} distinct)", c["cache_off"]),
        ("cache on, first run", c["cache_on"]),
        ("cache on, same file again", c["cache_on_rerun"]),
    ]
    for name, r in rows:
        print(
            f"{name:<44} calls {r['upstream_calls']:>6}  cost {r['cost_usd']:.6f} USD  "
            f"{r['seconds']:.2f} s  {r['prompts_per_s']:.0f} prompts/s"
        )


def print_overhead(o: dict[str, Any]) -> None:
    for name, pps in o["best_prompts_per_s"].items():
        share = o["overhead_vs_plain"][name]
        cpu = [r["worker_cpu_ms_per_prompt"] for r in o["runs"][name]]
        print(
            f"overhead {name:<35} {pps:>8.0f} prompts/s  ({share:+.1%} vs plain)  "
            f"worker CPU {min(cpu):.2f}-{max(cpu):.2f} ms/prompt"
        )


def print_budget(b: dict[str, Any]) -> None:
    print(
        f"budget {b['budget_usd']} USD, 2 workers: spent {b['spent_usd']} "
        f"({b['spent_share_of_budget']:.2%}), jobs' sum {b['jobs_cost_sum_usd']}, "
        f"over by {b['over_budget_usd']}, {b['completed']} done, {b['failed']} budget_exceeded, "
        f"left reserved {b['reserved_after_usd']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--budget-lines", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parts", default="cache,overhead,budget", help="a subset to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    raise_on_sigterm()
    log_dir = OUT_DIR / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "command": " ".join([".venv/bin/python", "bench/cost.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "source": source_state(OUT_DIR.parent.parent),
    }
    with tempfile.TemporaryDirectory(prefix="promptq-bench-cost-") as tmp, ExitStack() as stack:
        svc = start_services(stack, log_dir, Path(tmp))
        if "cache" in parts:
            results["cache"] = part_cache(svc, args.lines, args.concurrency)
        if "overhead" in parts:
            results["overhead"] = part_overhead(svc, args.lines, args.concurrency, args.rounds)
        if "budget" in parts:
            results["budget"] = part_budget(svc, args.budget_lines, args.concurrency)
    print_summary(results)
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"cost-{results['date']}-{int(time.time())}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
