"""Another tenant's latency while one tenant holds 30 downloads it never reads.

    PYTHONPATH=. python bench/slow_clients.py [--readers 30] [--requests 100]

Starts its own Postgres database, Redis server and API process (with a download cap above
the reader count, so only held sessions would hurt); prints a JSON summary."""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.common import api_client, machine_info, make_api_key, temp_database
from bench.upload_limits import batch_line, start_api, upload_file


def _latencies(client: httpx.Client, file_id: str, n: int) -> dict[str, Any]:
    timings: list[float] = []
    statuses: dict[int, int] = {}
    for _ in range(n):
        for path in ("/v1/batches", f"/v1/files/{file_id}"):
            start = time.perf_counter()
            status = client.get(path).status_code
            timings.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
    timings.sort()
    return {
        "requests": len(timings),
        "statuses": statuses,
        "median_ms": round(statistics.median(timings) * 1000, 1),
        "p99_ms": round(timings[int(len(timings) * 0.99)] * 1000, 1),
        "max_ms": round(timings[-1] * 1000, 1),
    }


def _stall(url: str, key: str, file_id: str, readers: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: api\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    socks = []
    for i in range(readers):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(request)
        sock.settimeout(60)
        if sock.recv(12) != b"HTTP/1.1 200":
            raise RuntimeError("a download did not start")
        if i % 2:
            sock.shutdown(socket.SHUT_WR)
        socks.append(sock)
    return socks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readers", type=int, default=30)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db_url = stack.enter_context(temp_database(prefix="bench_slow"))
        extra = {"PROMPTQ_TENANT_MAX_DOWNLOADS": str(args.readers + 5)}
        _, url = start_api(stack, db_url, work, extra)
        hoarder, bystander = make_api_key(db_url, "hoarder"), make_api_key(db_url, "bystander")
        big = work / "big.jsonl"
        big.write_text("".join(batch_line(f"l-{i}", "words " * 200) + "\n" for i in range(20_000)))
        small = work / "small.jsonl"
        small.write_text(batch_line("a", "b") + "\n")
        with api_client(url, hoarder) as client:
            big_id = upload_file(client, big)["id"]
        with api_client(url, bystander) as client:
            small_id = upload_file(client, small)["id"]
            before = _latencies(client, small_id, args.requests)
            socks = _stall(url, hoarder, big_id, args.readers)
            try:
                during = _latencies(client, small_id, args.requests)
            finally:
                for sock in socks:
                    sock.close()
    result = {
        "machine": machine_info(),
        "readers": args.readers,
        "other_tenant_before": before,
        "other_tenant_during": during,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
