"""Worker hosts that come and go: promptq across four hosts on one machine (network
namespaces), one worker host unplugged mid-batch and plugged back in."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from promptq.db import create_sync_engine
from promptq.migrate import upgrade
from tests.acceptance.helpers import chat_line, read_file, upload_and_run, wait_batch, write_jsonl
from tests.conftest import SIM_KEY, stack_env
from tests.netns import Host, Network, PostgresHost, netns_available, redis_on
from tests.procs import Child, wait_for, wait_http
from tests.stack import make_key

pytestmark = pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))

LINES = 800


@dataclass
class Cluster:
    net: Network
    api_url: str
    pg_url: str
    api_key: str
    w1: Host
    w1_proc: Child
    w2_proc: Child


def _models_file(path: Path, sim: str) -> Path:
    path.write_text(f"""
[[models]]
name = "sim-gpt"
backend = "openai"
base_url = "{sim}/v1"
api_key_env = "SIM_PROVIDER_KEY"
input_per_mtok = 1
output_per_mtok = 2
""")
    return path


@pytest.fixture
def cluster(tmp_path: Path, log_dir: Path) -> Iterator[Cluster]:
    """Postgres, Redis and the simulated provider on `db`, the API and scheduler on `api`,
    a remote worker on each of `w1` and `w2`."""
    net = Network()
    children: list[Child] = []
    pg: PostgresHost | None = None
    try:
        db, api, w1, w2 = (net.host(n) for n in ("db", "api", "w1", "w2"))
        pg = PostgresHost(db, log_dir)
        redis, redis_url = redis_on(db, log_dir)
        children.append(redis)
        # Each worker host calls a provider on its own loopback: an unplugged worker keeps
        # getting answers it can no longer store, the late results the leases must refuse.
        sim_args = ["sim-provider", "--port", "9200", "--latency-ms", "300"]
        for host in (w1, w2):
            children.append(
                host.promptq(f"sim-{host.name}", [*sim_args, "--api-key", SIM_KEY], {}, log_dir)
            )
        upgrade(pg.url)
        for host in (w1, w2):
            wait_for(lambda h=host: h.listening(9200), 30, f"provider on {host.name}")
        sim_url = "http://127.0.0.1:9200"
        env = stack_env(pg.url, redis_url, _models_file(tmp_path / "m.toml", sim_url), tmp_path)
        env["PROMPTQ_REQUEST_TIMEOUT_SECONDS"] = "5"
        # An unplugged host's Redis connection is half-open: a BRPOP it sent before the link
        # went down still takes a message, which then goes nowhere. The sweeper re-sends a
        # job queued this long without a claim (30 min by default; short here).
        env["PROMPTQ_REQUEUE_AFTER_SECONDS"] = "20"
        children.append(
            api.promptq("api", ["api", "--host", api.address, "--port", "8000"], env, log_dir)
        )
        children.append(api.promptq("scheduler", ["scheduler"], env, log_dir))
        workers = [
            host.promptq(
                f"worker-{host.name}",
                ["worker", "remote", "--concurrency", "16", "--metrics-port", "9100"],
                env,
                log_dir,
            )
            for host in (w1, w2)
        ]
        children += workers
        api_url = f"http://{api.address}:8000"
        wait_http(f"{api_url}/healthz")
        for worker in workers:
            wait_for(lambda w=worker: "worker.ready" in w.log_text() or not w.alive(), 60, "worker")
            assert worker.alive(), worker.log_text()
        yield Cluster(net, api_url, pg.url, make_key(pg.url, "netns"), w1, *workers)
    finally:
        for child in reversed(children):
            child.stop(10)
        if pg is not None:
            pg.stop()
        net.close()


def _owned_by(pg_url: str, child: Child) -> int:
    owner = f"remote@{socket.gethostname()}:{child.popen.pid}"
    engine = create_sync_engine(pg_url)
    with engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT count(*) FROM jobs WHERE status = 'running' AND lease_owner = :o"),
            {"o": owner},
        ).scalar_one()
    engine.dispose()
    return int(count)


def _in_flight(host: Host) -> float | None:
    try:
        text = httpx.get(f"http://{host.address}:9100/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    samples = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "promptq_in_flight"
    ]
    return sum(samples)


def _ledger(pg_url: str, batch_id: str) -> tuple[int, int, object, object]:
    engine = create_sync_engine(pg_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT u.job_id), sum(u.cost_usd), "
                "(SELECT sum(cost_usd) FROM jobs WHERE batch_id = :b) "
                "FROM usage_records u WHERE u.batch_id = :b"
            ),
            {"b": batch_id},
        ).one()
    engine.dispose()
    return (int(row[0]), int(row[1]), row[2], row[3])


def _retried(pg_url: str, batch_id: str) -> int:
    engine = create_sync_engine(pg_url)
    with engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT count(*) FROM jobs WHERE batch_id = :b AND attempts > 1"),
            {"b": batch_id},
        ).scalar_one()
    engine.dispose()
    return int(count)


def test_a_worker_host_unplugged_mid_batch_loses_and_double_bills_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    client = httpx.Client(
        base_url=cluster.api_url,
        headers={"Authorization": f"Bearer {cluster.api_key}"},
        timeout=30,
    )
    # Given a batch running on two worker hosts, w1 holding jobs
    lines = [chat_line(f"n-{i}", f"netns line {i}", max_tokens=8) for i in range(LINES)]
    batch = upload_and_run(client, write_jsonl(tmp_path / "in.jsonl", lines))
    wait_for(lambda: _owned_by(cluster.pg_url, cluster.w1_proc) > 0, 60, "w1 running jobs")
    # When w1's network link goes down (its process keeps running)
    cluster.net.unplug(cluster.w1)
    # Then w2 finishes the batch: every line exactly once, none failed
    done = wait_batch(client, batch["id"], timeout=240)
    assert done["status"] == "completed", done
    counts = done["request_counts"]
    assert (counts["total"], counts["completed"], counts["failed"]) == (LINES, LINES, 0)
    output = read_file(client, done["output_file_id"])
    assert Counter(line["custom_id"] for line in output) == Counter(f"n-{i}" for i in range(LINES))
    # And w1's jobs were re-run elsewhere, each billed once
    assert _retried(cluster.pg_url, batch["id"]) > 0
    ledger = _ledger(cluster.pg_url, batch["id"])
    assert ledger[:2] == (LINES, LINES) and ledger[2] == ledger[3], ledger
    # When w1 is plugged back in and has settled its late work
    cluster.net.plug(cluster.w1)
    wait_for(lambda: _in_flight(cluster.w1) == 0, 120, "w1 to settle")
    late = cluster.w1_proc.log_text()
    assert "job.lease_lost" in late, late[-3000:]  # its late results were refused
    # Then its late results were refused: nothing changed, nothing billed twice
    assert _ledger(cluster.pg_url, batch["id"]) == ledger
    again = client.get(f"/v1/batches/{batch['id']}").json()
    assert again["request_counts"] == done["request_counts"]
    assert json.dumps(read_file(client, done["output_file_id"]), sort_keys=True) == json.dumps(
        output, sort_keys=True
    )
    assert cluster.w1_proc.alive(), cluster.w1_proc.log_text()[-3000:]
    assert cluster.w2_proc.alive(), cluster.w2_proc.log_text()[-3000:]
