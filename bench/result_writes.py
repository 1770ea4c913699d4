"""What storing a finished job costs the worker: CPU time per stored result of
`jobs.record_finished` (guarded UPDATE, ledger row, COMMIT) when results are written one
transaction each and in groups, against a fresh Postgres database.

    .venv/bin/python bench/result_writes.py [--jobs 2000] [--groups 1,10,50,100]

Results: a table on stdout and bench/out/result-writes-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from common import machine_info, source_state, temp_database

from promptq.db import Database
from promptq.jobs import ClaimedJob, JobOutcome, claim, record_finished, submit
from promptq.models import Job, utcnow

OUT_DIR = Path(__file__).resolve().parent / "out"
# About what the simulated provider answers for one bench prompt.
OUTCOME = JobOutcome(
    content="A one-sentence summary of the document.",
    finish_reason="stop",
    prompt_tokens=14,
    completion_tokens=9,
    cost_usd=Decimal("0.0000075"),
    response={
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "gpt-sim",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A one-sentence summary."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23},
    },
)


async def _running_jobs(db: Database, n: int) -> list[ClaimedJob]:
    async with db.session() as session:
        for i in range(n):
            job = Job(
                id=f"job_{i}",
                tenant="bench",
                model="sim-gpt",
                queue="q",
                body={"messages": [{"role": "user", "content": f"Summarise document {i}."}]},
                priority=5,
                max_attempts=3,
                created_at=utcnow(),
            )
            submit(session, job)  # stored as POST /v1/jobs stores it
        await session.commit()
        jobs: list[ClaimedJob] = []
        for start in range(0, n, 32):
            ids = [f"job_{i}" for i in range(start, min(n, start + 32))]
            jobs += await claim(session, ids, "bench-worker", 3600)
        return jobs


async def measure(url: str, jobs: int, group: int) -> dict[str, Any]:
    """Store `jobs` results, `group` per transaction; CPU of this process per result."""
    db = Database(url, pool_size=2)
    try:
        claimed = await _running_jobs(db, jobs)
        before = os.times()
        stored = 0
        for start in range(0, jobs, group):
            async with db.session() as session:
                items = [(job, OUTCOME) for job in claimed[start : start + group]]
                stored += sum(await record_finished(session, items))
        after = os.times()
    finally:
        await db.dispose()
    if stored != jobs:
        raise RuntimeError(f"stored {stored} of {jobs} results")
    user, system = after.user - before.user, after.system - before.system
    return {
        "group": group,
        "jobs": jobs,
        "cpu_us_per_result": round((user + system) * 1e6 / jobs, 1),
        "user_us_per_result": round(user * 1e6 / jobs, 1),
        "system_us_per_result": round(system * 1e6 / jobs, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--groups", default="1,10,50,100", help="results per transaction")
    args = parser.parse_args()
    runs = []
    for group in (int(g) for g in args.groups.split(",")):
        with temp_database(prefix="bench_writes") as url:
            runs.append(asyncio.run(measure(url, args.jobs, group)))
        r = runs[-1]
        print(
            f"{group:>4} per transaction: {r['cpu_us_per_result']:7.1f} us CPU per result "
            f"(user {r['user_us_per_result']}, system {r['system_us_per_result']})",
            flush=True,
        )
    day = datetime.now(UTC).date().isoformat()
    results = {
        "date": day,
        "command": " ".join([".venv/bin/python", "bench/result_writes.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "source": source_state(OUT_DIR.parent.parent),
        "runs": runs,
    }
    OUT_DIR.mkdir(exist_ok=True)
    out, n = OUT_DIR / f"result-writes-{day}.json", 1
    while out.exists():
        n += 1
        out = OUT_DIR / f"result-writes-{day}-{n}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
