"""Upload limits under load: the API's peak memory for one huge line, and how long
/healthz takes to answer while a large file is being uploaded.

    PYTHONPATH=. python bench/upload_limits.py [--huge-mb 190] [--lines 100000]

Starts its own Postgres database, Redis server and API process; prints a JSON summary."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Proc,
    api_client,
    free_port,
    machine_info,
    make_api_key,
    proc_status_kib,
    redis_server_binary,
    temp_database,
    wait_http,
)

MIB = 1024


def batch_line(custom_id: str, text: str) -> str:
    """One chat line of a batch input file."""
    body = {"model": "sim-gpt", "messages": [{"role": "user", "content": text}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line)


def start_api(
    stack: ExitStack, db_url: str, log_dir: Path, extra: dict[str, str] | None = None
) -> tuple[Proc, str]:
    """Redis and an API process on a fresh port, stopped when `stack` closes."""
    redis_port = free_port()
    redis_args = [redis_server_binary(), "--port", str(redis_port), "--save", ""]
    redis = Proc("redis", redis_args, {}, log_dir)
    stack.callback(redis.stop)
    env = {
        "PROMPTQ_DATABASE_URL": db_url,
        "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PROMPTQ_HOME": str(log_dir),
        "PROMPTQ_MAX_UPLOAD_BYTES": str(400 * 1024 * 1024),
        "PROMPTQ_MAX_FILE_LINES": "1000000",
        **(extra or {}),
    }
    port = free_port()
    api = Proc.promptq("api", ["api", "--port", str(port)], env, log_dir)
    stack.callback(api.stop)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    return api, url


def upload_file(client: httpx.Client, path: Path) -> dict[str, Any]:
    """POST /v1/files; the file object."""
    with path.open("rb") as fh:
        response = client.post(
            "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "batch"}, timeout=600
        )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def huge_line(client: httpx.Client, api: Proc, work: Path, megabytes: int) -> dict[str, Any]:
    """Upload one line of `megabytes` MB between two small ones; the API's peak RSS."""
    path = work / "huge.jsonl"
    with path.open("w") as fh:
        fh.write(batch_line("a", "small") + "\n")
        fh.write(batch_line("huge", "x" * (megabytes * 1_000_000)) + "\n")
        fh.write(batch_line("b", "small") + "\n")
    before = proc_status_kib(api.pid, "VmRSS")
    file = upload_file(client, path)
    peak = proc_status_kib(api.pid, "VmHWM")
    path.unlink()
    return {
        "line_mb": megabytes,
        "lines_stored": file["line_count"],
        "api_rss_before_mib": round(before / MIB),
        "api_peak_rss_mib": round(peak / MIB),
    }


def healthz_during_upload(client: httpx.Client, url: str, work: Path, lines: int) -> dict[str, Any]:
    """Probe /healthz every 20 ms while a `lines`-line file uploads; its latencies."""
    path = work / "many.jsonl"
    with path.open("w") as fh:
        for i in range(lines):
            fh.write(batch_line(f"l-{i}", f"document {i} " + "words " * 40) + "\n")
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                start = time.perf_counter()
                http.get(f"{url}/healthz").raise_for_status()
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    start = time.perf_counter()
    upload_file(client, path)
    upload_s = time.perf_counter() - start
    done.set()
    thread.join()
    latencies.sort()
    return {
        "lines": lines,
        "upload_s": round(upload_s, 2),
        "healthz_probes": len(latencies),
        "healthz_median_ms": round(statistics.median(latencies) * 1000, 1),
        "healthz_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "healthz_max_ms": round(latencies[-1] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--huge-mb", type=int, default=190)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db_url = stack.enter_context(temp_database(prefix="bench_upload"))
        api, url = start_api(stack, db_url, work)
        with api_client(url, make_api_key(db_url, "bench")) as client:
            result = {
                "machine": machine_info(),
                "huge_line": huge_line(client, api, work, args.huge_mb),
                "healthz": healthz_during_upload(client, url, work, args.lines),
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
