"""The remote worker's CPU per job, in process: the worker runtime (claim, provider call,
result write) over N queued jobs against the simulated provider at zero latency, with
traffic control on (as `promptq worker remote` runs) and off, no limits declared; with
--profile, the cProfile of the runtime's loop thread, by own time.

    .venv/bin/python bench/worker_cpu.py [--jobs 4000] [--rounds 3] [--profile 25]

Needs the Postgres of bench/common.py and a Redis at --redis-url (a database of its own).
Results on stdout (CPU ms per job: the process's user+system time over the run).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from common import Child, free_port, temp_database, wait_http

from promptq.catalog import load_catalog
from promptq.config import Settings
from promptq.constants import REMOTE_QUEUE
from promptq.db import Database
from promptq.jobs import submit
from promptq.models import Job, utcnow
from promptq.workers.launch import remote_runtime

BODY = {"messages": [{"role": "user", "content": "Summarise this."}], "max_tokens": 16}


async def add_jobs(url: str, n: int, tag: str) -> None:
    db = Database(url)
    async with db.session() as session:
        for i in range(n):
            submit(
                session,
                Job(
                    id=f"{tag}_{i}",
                    tenant="t",
                    model="sim-gpt",
                    queue=REMOTE_QUEUE,
                    body=BODY,
                    max_attempts=3,
                    created_at=utcnow(),
                ),
            )
        await session.commit()
    await db.dispose()


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def one_round(
    settings: Settings, db_url: str, jobs: int, traffic: bool, tag: str, profile: bool
) -> tuple[float, float, pstats.Stats | None]:
    """(CPU ms per job, jobs per s, profile) of one run of `jobs` jobs."""
    asyncio.run(add_jobs(db_url, jobs, tag))
    runtime = remote_runtime(settings, concurrency=64)
    runtime._use_traffic = traffic  # the launcher always turns it on
    runtime.start()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:  # cProfile follows one thread: the runtime's loop
        runtime.call(asyncio.sleep(0))
        runtime._loop.call_soon_threadsafe(profiler.enable)
    start_cpu, start = cpu(), time.perf_counter()
    counters = runtime.run_until_idle([REMOTE_QUEUE], 600)
    used, wall = cpu() - start_cpu, time.perf_counter() - start
    if profiler is not None:
        runtime._loop.call_soon_threadsafe(profiler.disable)
        runtime.call(asyncio.sleep(0))
    runtime.stop()
    assert counters["succeeded"] >= jobs, counters
    stats = pstats.Stats(profiler) if profiler is not None else None
    return used * 1000 / jobs, jobs / wall, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    parser.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumulative")
    parser.add_argument("--match", default="", help="only functions whose path has this")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-wcpu-"))
    with ExitStack() as stack:
        port = free_port()
        sim = Child(
            "sim", [sys.executable, "-m", "promptq.sim_provider", "--port", str(port)], {}, log_dir
        )
        stack.callback(sim.stop)
        wait_http(f"http://127.0.0.1:{port}/_sim/stats")
        models = log_dir / "models.toml"
        models.write_text(
            f'[[models]]\nname = "sim-gpt"\nbackend = "openai"\n'
            f'base_url = "http://127.0.0.1:{port}/v1"\nupstream = "gpt-sim"\n'
        )
        load_catalog(models)
        db_url = stack.enter_context(temp_database(prefix="bench_wcpu"))
        settings = Settings(
            database_url=db_url, redis_url=args.redis_url, models_file=models, home=log_dir
        )
        figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for r in range(args.rounds):
            for traffic in (False, True):
                tag = f"r{r}{'t' if traffic else 'n'}"
                last = r == args.rounds - 1 and args.profile > 0
                ms, rate, stats = one_round(settings, db_url, args.jobs, traffic, tag, last)
                figures[traffic].append((ms, rate))
                print(f"round {r} traffic={traffic}: {ms:.3f} ms CPU/job, {rate:.0f} jobs/s")
                if stats is not None:
                    out = io.StringIO()
                    stats.stream = out  # type: ignore[attr-defined]
                    stats.sort_stats(args.sort).print_stats(args.match, args.profile)
                    print(out.getvalue())
        for traffic, rows in figures.items():
            best = min(ms for ms, _ in rows)
            print(f"traffic={traffic}: best {best:.3f} ms CPU/job over {len(rows)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
