"""What the hot statements of a big batch cost as the jobs table grows, without running the
batch: a database holding one batch of `--lines` lines, `--done` of them finished (each
moved queued -> running -> succeeded, as a run leaves them, dead row versions included)
and the rest queued. On it, with promptq's own code:

- claim: `jobs.claim` of the next 32 queued lines (a chunk as the dispatcher sends it);
- write: `jobs.record_finished` of those 32 results in one transaction;
- delivery: the sweeper's pass for unsent or long-sent queued jobs (finds none);
- finalize: a worker's check that the batch still has open jobs (`finalize_batch`);
- summary: the batch's counts and usage, what GET /v1/batches/{id} reads.

Each is measured with the jobs table never analyzed (autovacuum off for it: a table that
grew faster than autovacuum's analyze), then again after ANALYZE. Claim and write are also
measured on the empty table. Every schema given (`--schemas`, Alembic revisions) gets its
own database in the same run, so old and new indexes are compared on one machine state.

    .venv/bin/python bench/claim_scale.py [--lines 1000000] [--done 700000]
        [--schemas 0010_deadlines_queued_index,head] [--rounds 20]

Results: a table on stdout and bench/out/claim-scale-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from common import machine_info, source_state, temp_database
from result_writes import OUTCOME
from scale import probe_latency

from promptq.batches import finalize_batch
from promptq.db import Database
from promptq.jobs import claim, record_finished
from promptq.models import Job, utcnow
from promptq.scheduler.dispatch import dispatch_queued
from promptq.views import summarize

OUT_DIR = Path(__file__).resolve().parent / "out"
BATCH = "batch_bench"
CHUNK = 32
SEED_STEP = 50_000  # lines moved per statement while seeding

_BATCH_ROW = (
    "INSERT INTO batches (id, tenant, input_file_id, endpoint, completion_window, status,"
    " priority, created_at, expires_at, in_progress_at) VALUES (:id, 'bench', 'file-bench',"
    " '/v1/chat/completions', '24h', 'in_progress', 5, now(), now() + interval '1 day', now())"
)
# What validation stores for a bench line (bench/pipeline.py's prompt body).
_LINES = (
    "INSERT INTO jobs (id, tenant, batch_id, line_no, custom_id, model, body, priority, status,"
    " attempts, max_attempts, lost_count, queue, created_at, enqueued_at, api_key_id)"
    " SELECT 'job_' || substr(md5(i::text), 1, 24), 'bench', :batch, i, 'req-' || i,"
    " 'sim-gpt', jsonb_build_object('model', 'sim-gpt', 'messages', jsonb_build_array("
    "jsonb_build_object('role', 'user', 'content', 'Summarise document ' || i ||"
    " ' in one sentence.')), 'max_tokens', 16), 5, 'queued', 0, 3, 0, 'promptq.remote',"
    " now(), now(), 'key_bench' FROM generate_series(1, :n) AS i"
)
_START = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = 'seed',"
    " lease_expires_at = now() + interval '1 hour', started_at = now()"
    " WHERE batch_id = :batch AND line_no > :lo AND line_no <= :hi"
)
_FINISH = (
    "UPDATE jobs SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL,"
    " finished_at = now(), content = :content, finish_reason = 'stop',"
    " response = CAST(:response AS jsonb), prompt_tokens = 14, completion_tokens = 9,"
    " cost_usd = 0.0000075, ttft_ms = 1.0, cached = false, served_by = 'sim-gpt'"
    " WHERE batch_id = :batch AND line_no > :lo AND line_no <= :hi"
)


async def seed(db: Database, lines: int, done: int) -> None:
    """The batch, its lines queued, the first `done` run and finished in line order."""
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
        await conn.execute(sa.text(_BATCH_ROW), {"id": BATCH})
        await conn.execute(sa.text(_LINES), {"batch": BATCH, "n": lines})
    params = {"batch": BATCH, "content": OUTCOME.content, "response": json.dumps(OUTCOME.response)}
    for lo in range(0, done, SEED_STEP):
        bounds = {"lo": lo, "hi": min(lo + SEED_STEP, done)}
        async with db.engine.begin() as conn:
            await conn.execute(sa.text(_START), {**params, **bounds})
            await conn.execute(sa.text(_FINISH), {**params, **bounds})


async def _timed(action: Awaitable[Any]) -> float:
    # `action` is a coroutine not started yet: the clock covers all of it.
    start = time.perf_counter()
    await action
    return (time.perf_counter() - start) * 1000


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[max(int(len(ordered) * 0.95) - 1, 0)], 2),
    }


async def _next_chunk(db: Database) -> list[str]:
    async with db.session() as session:
        rows = await session.scalars(
            sa.select(Job.id)
            .where(Job.batch_id == BATCH, Job.status == "queued")
            .order_by(Job.line_no)
            .limit(CHUNK)
        )
        return list(rows)


async def measure(db: Database, rounds: int) -> dict[str, dict[str, float]]:
    """Each statement `rounds` times on the database as it is."""
    samples: dict[str, list[float]] = {
        k: [] for k in ("claim", "write", "delivery", "finalize", "summary")
    }
    app = Celery()  # nothing is published: the delivery pass finds no job to send
    cutoff = utcnow() - timedelta(seconds=1800)
    stale = sa.or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff)
    for _ in range(rounds):
        ids = await _next_chunk(db)
        async with db.session() as session:
            start = time.perf_counter()
            jobs = await claim(session, ids, "bench-worker", 3600)
            samples["claim"].append((time.perf_counter() - start) * 1000)
        async with db.session() as session:
            items = [(job, OUTCOME) for job in jobs]
            samples["write"].append(await _timed(record_finished(session, items)))
        async with db.session() as session:
            samples["delivery"].append(
                await _timed(dispatch_queued(session, app, CHUNK, stale, limit=20_000))
            )
        async with db.session() as session:
            samples["finalize"].append(await _timed(finalize_batch(session, BATCH)))
    for _ in range(max(rounds // 4, 3)):  # the slow one: fewer rounds
        async with db.session() as session:
            samples["summary"].append(await _timed(summarize(session, BATCH)))
    return {name: _stats(values) for name, values in samples.items()}


async def run_schema(url: str, args: argparse.Namespace) -> dict[str, Any]:
    empty = await probe_latency(url, "empty", rounds=args.rounds)
    db = Database(url, pool_size=2)
    try:
        start = time.perf_counter()
        await seed(db, args.lines, args.done)
        seeded_s = time.perf_counter() - start
        unanalyzed = await measure(db, args.rounds)
        async with db.engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE jobs"))
        analyzed = await measure(db, args.rounds)
    finally:
        await db.dispose()
    return {
        "empty": empty,
        "seed_s": round(seeded_s, 1),
        "no_statistics": unanalyzed,
        "analyzed": analyzed,
    }


def _print(schema: str, result: dict[str, Any]) -> None:
    empty = result["empty"]
    print(
        f"{schema}: empty table: claim {empty['claim_ms_median']} ms,"
        f" write {empty['write_ms_median']} ms (median of 32-job calls)",
        flush=True,
    )
    for state in ("no_statistics", "analyzed"):
        cells = ", ".join(
            f"{name} {s['median_ms']} ms (p95 {s['p95_ms']})" for name, s in result[state].items()
        )
        print(f"  {state}: {cells}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--done", type=int, default=700_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--schemas", default="0010_deadlines_queued_index,head")
    args = parser.parse_args()
    if args.done + 2 * args.rounds * CHUNK > args.lines:
        parser.error("--done leaves too few queued lines for the rounds")
    runs: dict[str, Any] = {}
    for schema in args.schemas.split(","):
        with temp_database(prefix="bench_claim", revision=schema) as url:
            runs[schema] = asyncio.run(run_schema(url, args))
        _print(schema, runs[schema])
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    results = {
        "date": stamp,
        "command": " ".join([".venv/bin/python", "bench/claim_scale.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "source": source_state(OUT_DIR.parent.parent),
        "lines": args.lines,
        "done": args.done,
        "jobs_per_call": CHUNK,
        "runs": runs,
    }
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"claim-scale-{stamp}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
