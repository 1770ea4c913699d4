"""Shared helpers for the benchmarks: a throwaway Postgres database, readings from /proc
(CPU time, RSS, peak RSS, the machine), and promptq API calls. Child processes, the
redis-server command line and waits are promptq.embedded's, as in the demo and tests."""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from promptq.embedded import Child, free_port, poll_until, redis_args, wait_http, wait_until

__all__ = [
    "PG_ADMIN_URL",
    "Child",
    "CpuMeter",
    "api_client",
    "count_lines",
    "cpu_seconds",
    "create_batch",
    "free_port",
    "group_cpu_seconds",
    "group_process_cpu",
    "load_average",
    "machine_busy_seconds",
    "machine_info",
    "make_api_key",
    "postgres_cpu_seconds",
    "proc_status_kib",
    "raise_on_sigterm",
    "redis_args",
    "source_state",
    "temp_database",
    "upload",
    "wait_batch",
    "wait_http",
    "wait_until",
    "wait_validated",
]

PG_ADMIN_URL = os.environ.get("PROMPTQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextmanager
def temp_database(
    admin_url: str = PG_ADMIN_URL, prefix: str = "bench", revision: str = "head"
) -> Iterator[str]:
    """A new database migrated to `revision`; dropped (with its connections) on exit."""
    from promptq.db import create_sync_engine
    from promptq.migrate import upgrade

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_sync_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            url = admin_url.rsplit("/", 1)[0] + f"/{name}"
            upgrade(url, revision)
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def make_api_key(db_url: str, name: str) -> str:
    """A new API key, made the way `promptq keys create` makes one."""
    from promptq.db import Database
    from promptq.keys import create_key

    async def _create() -> str:
        db = Database(db_url)
        try:
            async with db.session() as session:
                token, _ = await create_key(session, name)
                return str(token)
        finally:
            await db.dispose()

    return asyncio.run(_create())


def proc_status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM (the peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the fields after "pid (comm)"


def _processes() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, comm, stat fields) of every process, skipping those that exit meanwhile."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
                yield int(entry.name), comm, _stat_fields(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue


def _cpu(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime, all threads


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), in seconds."""
    return _cpu(_stat_fields(pid))


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process in a process group (a Proc and, e.g., its forks)."""
    return sum(_cpu(fields) for _, _, fields in _processes() if int(fields[2]) == pgid)


def group_process_cpu(pgid: int) -> dict[str, float]:
    """CPU time of each live process in a process group, keyed `comm:pid` (e.g. to tell a
    worker's own process from the engine process it spawned)."""
    return {
        f"{comm}:{pid}": _cpu(fields)
        for pid, comm, fields in _processes()
        if int(fields[2]) == pgid
    }


def postgres_cpu_seconds(database: str | None = None) -> float:
    """CPU time of the running `postgres` processes, in seconds: all of them, or with
    `database` the server's own (checkpointer, WAL writer...) and the backends and
    autovacuum workers of that database, not those of other users of a shared server."""
    total = 0.0
    for pid, comm, fields in _processes():
        if comm != "postgres":
            continue
        if database is not None:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            # A backend's title is "postgres: 15/main: USER DATABASE HOST(PORT) STATE", an
            # autovacuum worker's "... autovacuum worker DATABASE"; the server's name none.
            databases = {word.decode(errors="replace") for word in title[3:5]}
            serves_one = (
                len(title) >= 4
                and title[0] == b"postgres:"
                and title[2]
                not in (
                    b"checkpointer",
                    b"walwriter",
                    b"background",
                    b"logical",
                )
            )
            if serves_one and database not in databases:
                continue
        total += _cpu(fields)
    return total


def source_state(repo: Path) -> str:
    """The commit measured, and whether promptq/ had uncommitted changes then."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(repo), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--", "promptq", "alembic")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs, all processes) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def load_average() -> float:
    """The one-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    mem_kib = _meminfo_kib("MemTotal")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _meminfo_kib(field: str) -> int:
    """A `kB` field of /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `finally` blocks stop children and drop data."""

    def _handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _handler)


class CpuMeter:
    """CPU seconds each process group (and Postgres, all backends) used since creation, and
    what the rest of the machine used meanwhile (other users of a shared machine)."""

    def __init__(self, procs: Mapping[str, Child], database: str | None = None) -> None:
        self._procs = dict(procs)
        self._database = database  # count only this database's backends, when given
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        used = {name: group_cpu_seconds(proc.pid) for name, proc in self._procs.items()}
        # Approximate: live processes only (a backend's CPU is lost when it exits).
        used["postgres"] = postgres_cpu_seconds(self._database)
        used["bench client"] = sum(os.times()[:2])  # this process: sending, polling
        used["machine"] = machine_busy_seconds()
        return used

    def used(self) -> dict[str, float]:
        now = self._read()
        used = {name: round(max(0.0, now[name] - self._start[name]), 2) for name in now}
        machine = used.pop("machine")
        used["other processes"] = round(max(0.0, machine - sum(used.values())), 2)
        return used


@contextmanager
def api_client(url: str, key: str) -> Iterator[httpx.Client]:
    """An HTTP client for promptq's API with a bearer key."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        yield client


def upload(client: httpx.Client, path: Path) -> tuple[str, float]:
    """POST /v1/files (streamed from disk); returns the file id and the seconds taken."""
    start = time.perf_counter()
    with path.open("rb") as fh:
        response = client.post(
            "/v1/files",
            files={"file": (path.name, fh, "application/jsonl")},
            data={"purpose": "batch"},
        )
    response.raise_for_status()
    return str(response.json()["id"]), time.perf_counter() - start


def create_batch(client: httpx.Client, file_id: str) -> tuple[dict[str, Any], float]:
    """POST /v1/batches; returns the batch and the seconds taken."""
    start = time.perf_counter()
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    response = client.post("/v1/batches", json=body)
    response.raise_for_status()
    return response.json(), time.perf_counter() - start


def wait_validated(
    client: httpx.Client, batch_id: str, timeout: float = 600.0, interval: float = 0.1
) -> tuple[dict[str, Any], float]:
    """Poll a batch until it is no longer `validating` (its lines are stored as jobs);
    returns it and the seconds waited."""
    start = time.perf_counter()
    while True:
        batch: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").raise_for_status().json()
        if batch["status"] != "validating":
            return batch, time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"batch {batch_id} still validating after {timeout}s")
        time.sleep(interval)


def wait_batch(
    client: httpx.Client,
    batch_id: str,
    timeout: float,
    procs: Mapping[str, Child],
    interval: float = 0.1,
) -> dict[str, Any]:
    """Poll the batch every `interval` seconds until it is terminal; raises on a timeout or
    if a process died."""
    batch: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/batches/{batch_id}").json(),
        lambda b: b["status"] in ("completed", "failed", "cancelled", "expired"),
        timeout,
        f"batch {batch_id}",
        alive=lambda: all(proc.alive() for proc in procs.values()),
        interval=interval,
    )
    return batch


def count_lines(client: httpx.Client, file_id: str) -> int:
    """The number of lines of a file's content, streamed."""
    lines = 0
    with client.stream("GET", f"/v1/files/{file_id}/content") as response:
        response.raise_for_status()
        for _ in response.iter_lines():
            lines += 1
    return lines
