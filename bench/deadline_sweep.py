"""What the scheduler's deadline watch costs: `jobs.expire_queued`, which runs every second,
against a fresh Postgres database holding a large queued backlog (jobs without a
deadline, as batch lines are). Measured: one pass when nothing is due, with the partial
index of queued deadlines and without it (the baseline, same run); then the expiry of
many overdue native jobs in chunks (total, and the longest chunk: how long its row locks
are held).

    .venv/bin/python bench/deadline_sweep.py [--queued 200000] [--overdue 20000] [--passes 20]

Results: a table on stdout and bench/out/deadline-sweep-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import machine_info, source_state, temp_database

from promptq.db import Database
from promptq.jobs import expire_queued
from promptq.jobs.transitions import EXPIRE_CHUNK

OUT_DIR = Path(__file__).resolve().parent / "out"
_INSERT = """
INSERT INTO jobs (id, tenant, model, queue, body, priority, status, attempts, max_attempts,
                  lost_count, created_at, enqueued_at, deadline_at)
SELECT :prefix || n, 'bench', 'sim-gpt', 'promptq.remote', '{"messages": []}', 5, 'queued',
       0, 3, 0, now(), now(), :deadline
FROM generate_series(1, :n) AS n
"""


async def _insert(db: Database, prefix: str, n: int, deadline: datetime | None) -> None:
    async with db.session() as session:
        await session.execute(sa.text(_INSERT), {"prefix": prefix, "n": n, "deadline": deadline})
        await session.commit()
        await session.execute(sa.text("ANALYZE jobs"))
        await session.commit()


async def _idle_passes(db: Database, passes: int) -> float:
    """Milliseconds per pass of expire_queued when nothing is due (median)."""
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        async with db.session() as session:
            assert await expire_queued(session) == []
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


async def measure(url: str, queued: int, overdue: int, passes: int) -> dict[str, Any]:
    db = Database(url, pool_size=2)
    try:
        await _insert(db, "line_", queued, None)
        with_index = await _idle_passes(db, passes)
        async with db.session() as session:
            await session.execute(sa.text("DROP INDEX ix_jobs_queued_deadline_at"))
            await session.commit()
        without_index = await _idle_passes(db, passes)
        async with db.session() as session:
            await session.execute(
                sa.text(
                    "CREATE INDEX ix_jobs_queued_deadline_at ON jobs (deadline_at) "
                    "WHERE status = 'queued' AND deadline_at IS NOT NULL"
                )
            )
            await session.commit()
        await _insert(db, "native_", overdue, datetime(2026, 1, 1, tzinfo=UTC))
        chunks: list[float] = []
        expired = 0
        started = time.perf_counter()
        while True:
            chunk_started = time.perf_counter()
            async with db.session() as session:
                moved = len(await expire_queued(session))
            chunks.append((time.perf_counter() - chunk_started) * 1000)
            expired += moved
            if moved < EXPIRE_CHUNK:
                break
        total = time.perf_counter() - started
    finally:
        await db.dispose()
    if expired != overdue:
        raise RuntimeError(f"expired {expired} of {overdue}")
    return {
        "queued": queued,
        "overdue": overdue,
        "idle_pass_ms_with_index": round(with_index, 2),
        "idle_pass_ms_without_index": round(without_index, 2),
        "expire_seconds": round(total, 3),
        "expired_per_second": round(overdue / total),
        "chunks": len(chunks),
        "longest_chunk_ms": round(max(chunks), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=200_000)
    parser.add_argument("--overdue", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    with temp_database(prefix="bench_deadlines") as url:
        run = asyncio.run(measure(url, args.queued, args.overdue, args.passes))
    ratio = run["idle_pass_ms_without_index"] / max(run["idle_pass_ms_with_index"], 0.001)
    print(
        f"idle pass over {run['queued']:,} queued jobs: {run['idle_pass_ms_with_index']} ms "
        f"with the partial index, {run['idle_pass_ms_without_index']} ms without "
        f"({ratio:.0f}x)\n"
        f"{run['overdue']:,} overdue jobs expired in {run['expire_seconds']} s "
        f"({run['expired_per_second']:,}/s), {run['chunks']} chunks, longest "
        f"{run['longest_chunk_ms']} ms",
        flush=True,
    )
    day = datetime.now(UTC).date().isoformat()
    results = {
        "date": day,
        "command": " ".join([".venv/bin/python", "bench/deadline_sweep.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "source": source_state(OUT_DIR.parent.parent),
        "run": run,
    }
    OUT_DIR.mkdir(exist_ok=True)
    out, n = OUT_DIR / f"deadline-sweep-{day}.json", 1
    while out.exists():
        n += 1
        out = OUT_DIR / f"deadline-sweep-{day}-{n}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
