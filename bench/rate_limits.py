"""The rate-limit benchmark: how much of a provider's declared limit promptq uses, and how
many 429s it meets, with 1, 2 and 4 remote worker processes sharing the limit through
Redis; beside a baseline one-process client in the style of OpenAI's cookbook parallel
processor (an in-process bucket holding a minute's capacity, a 15 s pause after a 429).

Each run gets a fresh simulated provider enforcing `--rpm` (and `--tpm`, if given) as
per-second buckets, as real providers do, and a models file declaring the same limits;
then runs with `--undeclared-workers` processes whose models file declares no limit, so
promptq must discover it. The 429s are also counted after the first `--warmup` seconds
(from the provider's calls log), where discovery must have kept them under 5%.

    .venv/bin/python bench/rate_limits.py [--rpm 1200] [--seconds 30] [--workers 1,2,4]
        [--undeclared-workers 2]

Results: a table on stdout and bench/out/rate_limits-<date>.json; logs in bench/out/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from common import (
    Child,
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
from pipeline import spawn, start_api, start_redis, start_scheduler, start_worker

MODEL = "sim-limited"
MAX_TOKENS = 16


@dataclass
class Provider:
    """A simulated provider with enforced limits, in a child process."""

    proc: Child
    url: str

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_sim/stats", timeout=10).json()
        return data

    def calls(self) -> list[list[Any]]:
        """(seconds since the first call, status, prompt start) per call, in arrival order."""
        data: list[list[Any]] = httpx.get(f"{self.url}/_sim/calls", timeout=30).json()["calls"]
        return data


def start_provider(
    stack: ExitStack, log_dir: Path, name: str, args: argparse.Namespace
) -> Provider:
    port = free_port()
    flags = ["--port", str(port), "--latency-ms", str(args.latency_ms), "--rpm", str(args.rpm)]
    if args.tpm:
        flags += ["--tpm", str(args.tpm)]
    cmd = [sys.executable, "-m", "promptq.sim_provider", *flags]
    proc = spawn(stack, Child(name, cmd, {}, log_dir))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_sim/stats")
    return Provider(proc, url)


def prompt(i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Summarise document {i} in one line."}],
        "max_tokens": MAX_TOKENS,
    }


def _limit_rate(args: argparse.Namespace) -> float:
    """Requests per second the declared limits allow (the scarcer of RPM and TPM)."""
    rate = args.rpm / 60
    if args.tpm:
        # The provider charges prompt + max_tokens: about 14 + 16 tokens per request here.
        rate = min(rate, args.tpm / 60 / 30)
    return rate


def _lines(args: argparse.Namespace) -> int:
    return max(10, round(_limit_rate(args) * args.seconds))


def _figures(
    lines: int, elapsed: float, provider: Provider, args: argparse.Namespace
) -> dict[str, Any]:
    stats = provider.stats()
    by_status = stats["by_status"]
    # After the warm-up: the calls that arrived `args.warmup` s or more after the first.
    late = [status for at, status, _ in provider.calls() if at >= args.warmup]
    late_429s = sum(1 for status in late if status == 429)
    ok, limited = int(by_status.get("200", 0)), int(by_status.get("429", 0))
    # The time the limit allows for `lines` requests, counting the provider's 1 s burst.
    burst = max(1.0, args.rpm / 60)
    allowed = max(0.0, lines - burst) / _limit_rate(args)
    # At the provider: the served rate between its first and last answer, against the
    # limit's rate (the first second's burst excluded).
    window = stats.get("served_window_s") or 0.0
    provider_used = (ok - burst) / window / _limit_rate(args) if window > 0 and ok > burst else None
    return {
        "lines": lines,
        "provider_limit_used": round(provider_used, 3) if provider_used else None,
        "served": ok,
        "calls": sum(int(n) for n in by_status.values()),
        "429s": limited,
        "429_share": round(limited / max(1, ok + limited), 4),
        "late_calls": len(late),
        "late_429s": late_429s,
        "late_429_share": round(late_429s / len(late), 4) if late else None,
        "elapsed_s": round(elapsed, 2),
        "allowed_s": round(allowed, 2),
        "time_ratio": round(elapsed / allowed, 3) if allowed else None,
        "limit_used": round(allowed / elapsed, 3) if elapsed else None,
    }


# --- promptq ----------------------------------------------------------------------------------


def write_models_file(path: Path, url: str, args: argparse.Namespace, declared: bool) -> Path:
    limits = f"rpm = {args.rpm}\n" + (f"tpm = {args.tpm}\n" if args.tpm else "")
    if not declared:
        limits = ""
    path.write_text(
        f'[[models]]\nname = "{MODEL}"\nbackend = "openai"\nbase_url = "{url}/v1"\n{limits}'
    )
    return path


@dataclass
class Services:
    """What the promptq helpers of bench/pipeline.py expect (env, log_dir, procs)."""

    db_url: str
    env: dict[str, str]
    log_dir: Path
    work_dir: Path
    procs: dict[str, Child] = field(default_factory=dict)


def run_promptq(
    args: argparse.Namespace, workers: int, log_dir: Path, work_dir: Path, *, declared: bool
) -> dict[str, Any]:
    lines = _lines(args)
    with ExitStack() as stack:
        db_url = stack.enter_context(temp_database(prefix="bench_rl"))
        _redis, redis_port = start_redis(stack, log_dir)
        provider = start_provider(stack, log_dir, f"sim-w{workers}", args)
        env = {
            "PROMPTQ_DATABASE_URL": db_url,
            "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PROMPTQ_MODELS_FILE": str(
                write_models_file(work_dir / "models.toml", provider.url, args, declared)
            ),
            "PROMPTQ_HOME": str(work_dir / "home"),
        }
        svc = Services(db_url, env, log_dir, work_dir)
        _api, url = start_api(stack, svc, f"api-w{workers}")  # type: ignore[arg-type]
        procs = {}
        for i in range(workers):
            name = f"worker-w{workers}-{i + 1}"
            procs[name] = start_worker(stack, svc, args.concurrency, name)  # type: ignore[arg-type]
        procs["scheduler"] = start_scheduler(stack, svc)  # type: ignore[arg-type]
        path = work_dir / f"batch-{workers}.jsonl"
        with path.open("w") as out:
            for i in range(lines):
                body = prompt(i)
                out.write(
                    json.dumps(
                        {
                            "custom_id": f"l{i}",
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": body,
                        }
                    )
                    + "\n"
                )
        with api_client(url, make_api_key(db_url, "bench-rl")) as client:
            file_id, _ = upload(client, path)
            start = time.perf_counter()
            batch, _ = create_batch(client, file_id)
            done = wait_batch(client, batch["id"], args.timeout, procs)
            elapsed = time.perf_counter() - start
        counts = done["request_counts"]
        result = _figures(lines, elapsed, provider, args)
        result.update(
            workers=workers,
            limits="declared" if declared else "undeclared",
            completed=counts["completed"],
            failed=counts["failed"],
        )
        return result


# --- the baseline: OpenAI's cookbook parallel processor, in short ------------------------------


@dataclass
class Tracker:
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    rate_limit_errors: int = 0
    last_rate_limit: float = 0.0


async def _cookbook_call(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    attempts: list[int],
    retry: asyncio.Queue[tuple[dict[str, Any], list[int]]],
    tracker: Tracker,
) -> None:
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        status = response.status
        await response.read()
    if status == 200:
        tracker.succeeded += 1
    else:
        if status == 429:
            tracker.rate_limit_errors += 1
            tracker.last_rate_limit = time.monotonic()
        if attempts[0] > 0:
            retry.put_nowait((body, attempts))
        else:
            tracker.failed += 1
    tracker.in_progress -= 1


async def cookbook_client(url: str, lines: int, args: argparse.Namespace) -> Tracker:
    """api_request_parallel_processor.py's loop: capacity starts at a full minute's worth
    and refills continuously; after a 429 every request waits out 15 s; 5 attempts."""
    max_rpm, max_tpm = float(args.rpm), float(args.tpm or 10**12)
    pause_after_429, attempts_per_request = 15.0, 5
    request_capacity, token_capacity = max_rpm, max_tpm
    last_update = time.monotonic()
    todo = iter(range(lines))
    retry: asyncio.Queue[tuple[dict[str, Any], list[int]]] = asyncio.Queue()
    tracker, tasks, pending = Tracker(), set(), None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        while True:
            if pending is None:
                if not retry.empty():
                    pending = retry.get_nowait()
                elif (i := next(todo, None)) is not None:
                    pending = (prompt(i), [attempts_per_request])
                    tracker.in_progress += 1
            now = time.monotonic()
            request_capacity = min(max_rpm, request_capacity + max_rpm * (now - last_update) / 60)
            token_capacity = min(max_tpm, token_capacity + max_tpm * (now - last_update) / 60)
            last_update = now
            cost = 14 + MAX_TOKENS  # the cookbook counts prompt tokens + max_tokens
            if pending is not None and request_capacity >= 1 and token_capacity >= cost:
                request_capacity, token_capacity = request_capacity - 1, token_capacity - cost
                body, attempts = pending
                attempts[0] -= 1
                if attempts[0] < attempts_per_request - 1:
                    tracker.in_progress += 1
                task = asyncio.create_task(
                    _cookbook_call(session, url, body, attempts, retry, tracker)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                pending = None
            if tracker.in_progress == 0 and pending is None and retry.empty() and not tasks:
                break
            await asyncio.sleep(0.001)
            since = time.monotonic() - tracker.last_rate_limit
            if since < pause_after_429:
                await asyncio.sleep(pause_after_429 - since)
    return tracker


def run_baseline(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    lines = _lines(args)
    with ExitStack() as stack:
        provider = start_provider(stack, log_dir, "sim-baseline", args)
        start = time.perf_counter()
        tracker = asyncio.run(cookbook_client(provider.url, lines, args))
        elapsed = time.perf_counter() - start
        result = _figures(lines, elapsed, provider, args)
    result.update(
        workers="cookbook", limits="declared", completed=tracker.succeeded, failed=tracker.failed
    )
    return result


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rpm", type=int, default=1200, help="the provider's enforced RPM")
    parser.add_argument("--tpm", type=int, default=0, help="the provider's enforced TPM (0: none)")
    parser.add_argument("--seconds", type=float, default=30, help="batch size, in seconds of limit")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts to measure")
    parser.add_argument(
        "--undeclared-workers",
        default="2",
        help="worker process counts to measure with no declared limit ('': none)",
    )
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="429s are also counted after this many s"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="per worker process")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-baseline", action="store_true")
    return parser.parse_args(argv)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        "workers",
        "limits",
        "lines",
        "completed",
        "failed",
        "calls",
        "429s",
        "429_share",
        "late_429s",
        "late_calls",
        "late_429_share",
        "elapsed_s",
        "allowed_s",
        "limit_used",
        "provider_limit_used",
    )
    print(" | ".join(head))
    for row in rows:
        print(" | ".join(str(row.get(k)) for k in head))


def main() -> int:
    args = parse_args()
    raise_on_sigterm()
    out_dir = Path(__file__).parent / "out"
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    rows: list[dict[str, Any]] = []
    try:
        if not args.no_baseline:
            rows.append(run_baseline(args, log_dir))
            print(rows[-1], flush=True)
        for workers in (int(w) for w in args.workers.split(",") if w.strip()):
            rows.append(run_promptq(args, workers, log_dir, work_dir, declared=True))
            print(rows[-1], flush=True)
        for workers in (int(w) for w in args.undeclared_workers.split(",") if w.strip()):
            rows.append(run_promptq(args, workers, log_dir, work_dir, declared=False))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print_table(rows)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    result = {
        "args": vars(args),
        "machine": machine_info(),
        "source": source_state(Path(__file__).resolve().parent.parent),
        "runs": rows,
    }
    (out_dir / f"rate_limits-{day}.json").write_text(json.dumps(result, indent=2))
    return 0 if all(math.isfinite(float(r["elapsed_s"])) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
