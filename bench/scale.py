"""The scale benchmark: one big batch (1,000,000 prompts by default) against the simulated
provider at zero latency with several remote worker processes, recording

1. the upload (POST /v1/files): seconds, lines/s, the API's peak memory;
2. POST /v1/batches: seconds until it answers;
3. prompts/s over the run in 10% slices (flat is the goal: not falling as tables grow);
4. claim and result-write latency (promptq's own transitions, 32 jobs) on the empty
   database and again once it holds the whole batch;
5. Postgres table and index sizes at the end.

    .venv/bin/python bench/scale.py [--prompts 1000000] [--workers 3] [--concurrency 256]

Results: a table on stdout and bench/out/scale-<date>.json; process logs in bench/out/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from common import (
    CpuMeter,
    api_client,
    create_batch,
    machine_info,
    make_api_key,
    proc_status_kib,
    raise_on_sigterm,
    source_state,
    upload,
)
from pipeline import (
    MODEL,
    OUT_DIR,
    start_api,
    start_scheduler,
    start_services,
    start_worker,
    worker_names,
    write_jsonl,
)

from promptq.db import Database, create_sync_engine
from promptq.jobs import JobOutcome, claim, record_finished
from promptq.models import Job, JobStatus

PROBE_QUEUE = "bench.scale.probe"  # no worker consumes it: the probe's jobs stay put
TABLES = ("jobs", "file_lines", "usage_records", "files", "batches", "webhook_events")


# --- claim and result-write latency ----------------------------------------------------------


async def _probe_once(db: Database, tag: str, size: int) -> tuple[float, float]:
    ids = [f"probe-{tag}-{i}" for i in range(size)]
    async with db.session() as session:
        session.add_all(
            Job(
                id=i,
                tenant="bench",
                model=MODEL,
                queue=PROBE_QUEUE,
                body={},
                status=JobStatus.QUEUED,
            )
            for i in ids
        )
        await session.commit()
    start = time.perf_counter()
    async with db.session() as session:
        jobs = await claim(session, ids, "bench-probe", 60)
    claimed = time.perf_counter() - start
    outcome = JobOutcome("ok", "stop", 10, 5, Decimal("0.000001"), {})
    start = time.perf_counter()
    async with db.session() as session:
        await record_finished(session, [(job, outcome) for job in jobs])
    written = time.perf_counter() - start
    return claimed * 1000, written * 1000


async def probe_latency(
    db_url: str, label: str, rounds: int = 20, size: int = 32
) -> dict[str, Any]:
    """Median and p95 milliseconds to claim `size` jobs and to store their results."""
    db = Database(db_url, pool_size=2)
    try:
        samples = [await _probe_once(db, f"{label}-{r}", size) for r in range(rounds)]
    finally:
        await db.dispose()
    claims = sorted(s[0] for s in samples)
    writes = sorted(s[1] for s in samples)
    p95 = max(int(rounds * 0.95) - 1, 0)
    return {
        "jobs_per_call": size,
        "claim_ms_median": round(statistics.median(claims), 2),
        "claim_ms_p95": round(claims[p95], 2),
        "write_ms_median": round(statistics.median(writes), 2),
        "write_ms_p95": round(writes[p95], 2),
    }


def table_sizes(db_url: str) -> dict[str, dict[str, int]]:
    engine = create_sync_engine(db_url)
    sizes = {}
    with engine.connect() as conn:
        for table in TABLES:
            row = conn.execute(
                sa.text(
                    "SELECT pg_relation_size(:t), pg_indexes_size(:t), pg_total_relation_size(:t),"
                    " (SELECT count(*) FROM " + table + ")"
                ),
                {"t": table},
            ).one()
            sizes[table] = {
                "table_bytes": row[0],
                "index_bytes": row[1],
                "total_bytes": row[2],
                "rows": row[3],
            }
    engine.dispose()
    return sizes


# --- the run ---------------------------------------------------------------------------------


def _completed(client: httpx.Client, batch_id: str) -> tuple[str, int]:
    batch = client.get(f"/v1/batches/{batch_id}").json()
    return batch["status"], int(batch["request_counts"]["completed"]) + int(
        batch["request_counts"]["failed"]
    )


def watch_slices(
    client: httpx.Client,
    batch_id: str,
    prompts: int,
    timeout: float,
    interval: float,
    meter: CpuMeter,
) -> tuple[list[dict[str, Any]], float, float | None]:
    """Poll the batch; the time at which each 10% of its prompts had finished, the whole
    run, and when it stopped `validating` (its lines all stored as jobs). Each slice also
    says the CPU promptq's processes (with Postgres, Redis and the simulated provider) spent
    per prompt in it, and how many cores the rest of the machine used meanwhile: on a
    shared machine prompts/s follows the neighbours' load, CPU per prompt much less. The
    batch is polled every `interval` s: a slice finished within the same poll as the one
    before it shows zeros (only with small batches)."""
    start = time.perf_counter()
    marks: list[tuple[float, int, dict[str, float]]] = [(0.0, 0, meter.used())]
    status = "validating"
    validated: float | None = None
    while status not in ("completed", "failed", "cancelled", "expired"):
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"batch {batch_id} not finished after {timeout}s")
        time.sleep(interval)
        status, done = _completed(client, batch_id)
        marks.append((time.perf_counter() - start, done, meter.used()))
        if validated is None and status != "validating":
            validated = marks[-1][0]
    slices: list[dict[str, Any]] = []
    before = marks[0]
    for tenth in range(1, 11):
        goal = prompts * tenth / 10
        reached = next(mark for mark in marks if mark[1] >= goal)
        seconds = max(reached[0] - before[0], 1e-6)
        spent = {name: reached[2][name] - before[2][name] for name in reached[2]}
        other = spent.pop("other processes") + spent.pop("bench client")
        slices.append(
            {
                "slice": tenth * 10,
                "at_s": round(reached[0], 2),
                "prompts_per_s": round((reached[1] - before[1]) / seconds, 1),
                "promptq_cpu_ms_per_prompt": round(
                    1000 * sum(spent.values()) / max(reached[1] - before[1], 1), 3
                ),
                "postgres_cpu_ms_per_prompt": round(
                    1000 * spent["postgres"] / max(reached[1] - before[1], 1), 3
                ),
                "other_cores": round(other / seconds, 2),
            }
        )
        before = reached
    return slices, time.perf_counter() - start, validated


def run(args: argparse.Namespace) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    work = OUT_DIR / f"scale-{stamp}"
    log_dir = OUT_DIR / "logs" / f"scale-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "batch.jsonl"
    size = write_jsonl(path, args.prompts)
    with ExitStack() as stack:
        svc = start_services(stack, log_dir, work)
        svc.env.update(
            {
                "PROMPTQ_MAX_FILE_LINES": str(max(args.prompts, 100_000)),
                "PROMPTQ_MAX_UPLOAD_BYTES": str(max(size * 2, 200 * 1024 * 1024)),
                "PROMPTQ_JOB_TASK_EVENTS": "true",
            }
        )
        empty = asyncio.run(probe_latency(svc.db_url, "empty"))
        api, url = start_api(stack, svc, "api")
        procs = {"api": api}
        for name in worker_names(args.workers):
            procs[name] = start_worker(stack, svc, args.concurrency, name)
        procs["scheduler"] = start_scheduler(stack, svc)
        with api_client(url, make_api_key(svc.db_url, "bench-scale")) as client:
            file_id, upload_s = upload(client, path)
            api_peak_kib = proc_status_kib(api.pid, "VmHWM")
            database = sa.engine.make_url(svc.db_url).database
            meter = CpuMeter({**procs, **svc.procs}, database=database)
            batch, create_s = create_batch(client, file_id)
            slices, elapsed, validated = watch_slices(
                client, batch["id"], args.prompts, args.timeout, 2.0, meter
            )
            cpu = meter.used()
            api_peak_run_kib = proc_status_kib(api.pid, "VmHWM")
            final = client.get(f"/v1/batches/{batch['id']}").json()
        full = asyncio.run(probe_latency(svc.db_url, "full"))
        sizes = table_sizes(svc.db_url)
    return {
        "date": stamp,
        "machine": machine_info(),
        "source": source_state(Path(__file__).resolve().parents[1]),
        "prompts": args.prompts,
        "workers": args.workers,
        "worker_concurrency": args.concurrency,
        "file_bytes": size,
        "upload_s": round(upload_s, 2),
        "upload_lines_per_s": round(args.prompts / upload_s, 1),
        "api_peak_rss_mib": round(api_peak_kib / 1024, 1),
        "create_batch_s": round(create_s, 3),
        "create_batch_status": batch["status"],
        "validated_s": None if validated is None else round(validated, 1),
        "api_peak_rss_run_mib": round(api_peak_run_kib / 1024, 1),
        "final_status": final["status"],
        "request_counts": final["request_counts"],
        "run_s": round(elapsed, 1),
        "prompts_per_s": round(args.prompts / elapsed, 1),
        "slices": slices,
        "latency_empty": empty,
        "latency_full": full,
        "table_sizes": sizes,
        "cpu_s": cpu,
    }


def report(result: dict[str, Any]) -> None:
    print(f"{result['prompts']:,} prompts, {result['workers']} workers, {result['date']}")
    print(
        f"upload: {result['upload_s']} s ({result['upload_lines_per_s']:,} lines/s), "
        f"API peak RSS {result['api_peak_rss_mib']} MiB"
    )
    print(
        f"POST /v1/batches: {result['create_batch_s']} s (answered {result['create_batch_status']})"
    )
    print(
        f"validated (lines stored as jobs) {result['validated_s']} s after the answer; "
        f"API peak RSS over the run {result['api_peak_rss_run_mib']} MiB"
    )
    print(f"run: {result['run_s']} s, {result['prompts_per_s']:,} prompts/s")
    print(f"final: {result['final_status']} {result['request_counts']}")
    print("slice  prompts/s  promptq CPU ms/prompt (Postgres)  other processes, cores")
    for s in result["slices"]:
        print(
            f"{s['slice']:>4}%  {s['prompts_per_s']:>9,}  {s['promptq_cpu_ms_per_prompt']:>12.3f}"
            f" ({s['postgres_cpu_ms_per_prompt']:.3f})  {s['other_cores']:>20.2f}"
        )
    for label in ("latency_empty", "latency_full"):
        print(f"{label}: {result[label]}")
    for table, size in result["table_sizes"].items():
        print(
            f"  {table}: {size['rows']:,} rows, table {size['table_bytes'] / 2**20:.1f} MiB, "
            f"indexes {size['index_bytes'] / 2**20:.1f} MiB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=4 * 3600.0)
    args = parser.parse_args()
    raise_on_sigterm()
    result = run(args)
    report(result)
    out = OUT_DIR / f"scale-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
