"""Traffic control for provider calls against real Redis and simulated providers over
HTTP: limits hold, outages and 429s make jobs wait instead of failing, dead models fall
back, load spreads over deployments by their limits."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from promptq.catalog import Catalog, ModelEntry, parse_catalog
from promptq.config import Settings
from promptq.workers.remote_worker import RemoteBackend, make_http_session, make_remote_backend
from promptq.workers.traffic import Served, TrafficControl, TrafficJob, traffic_redis
from tests.sim import SimServer
from tests.stack import RedisServer

pytestmark = pytest.mark.anyio
_ids = itertools.count()


@pytest.fixture(scope="module")
def sims(log_dir: Path) -> Iterator[dict[str, SimServer]]:
    servers = {
        "limited": SimServer(log_dir, "--rpm", "1200", "--latency-ms", "5"),
        "dead": SimServer(log_dir, "--fail-status", "503"),
        "fallback": SimServer(log_dir),
        "outage": SimServer(log_dir, "--latency-ms", "5"),
        "fast": SimServer(log_dir, "--rpm", "1200"),
        "slow": SimServer(log_dir, "--rpm", "600"),
    }
    yield servers
    for server in servers.values():
        server.stop()


def _catalog(sims: dict[str, SimServer], run: str) -> Catalog:
    def model(name: str, url: str, extra: str = "") -> dict[str, object]:
        entry: dict[str, object] = {"name": name, "backend": "openai", "base_url": f"{url}/v1"}
        for line in filter(None, extra.split(";")):
            key, value = line.split("=")
            entry[key.strip()] = eval(value)  # test-only literals
        return entry

    models = [
        model(f"limited-{run}", sims["limited"].url, "rpm=1200"),
        model(f"undeclared-{run}", sims["limited"].url),
        model(f"dead-{run}", sims["dead"].url, f"fallbacks=['fallback-{run}']"),
        model(f"fallback-{run}", sims["fallback"].url),
        model(f"outage-{run}", sims["outage"].url),
        {
            "name": f"spread-{run}",
            "backend": "openai",
            "deployments": [
                {"name": f"fast-{run}", "base_url": f"{sims['fast'].url}/v1", "rpm": 1200},
                {"name": f"slow-{run}", "base_url": f"{sims['slow'].url}/v1", "rpm": 600},
            ],
        },
    ]
    return parse_catalog({"models": models})


class Harness:
    def __init__(self, control: TrafficControl, catalog: Catalog, run: str) -> None:
        self.control, self.catalog, self.run = control, catalog, run
        self.waits: Counter[str] = Counter()

    async def serve(self, model: str, n: int, **job: object) -> list[Served]:
        entry = self.catalog[f"{model}-{self.run}"]

        async def one(i: int) -> Served:
            async def on_wait(reason: str | None) -> None:
                if reason:
                    self.waits[reason] += 1

            body = {"messages": [{"role": "user", "content": f"line {i} of {n}"}], "max_tokens": 8}
            traffic_job = TrafficJob(id=f"job{next(_ids)}", attempt=1, body=body, **job)  # type: ignore[arg-type]
            return await self.control.run(traffic_job, entry, on_wait)

        return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.fixture
async def harness(sims: dict[str, SimServer], redis_server: RedisServer) -> AsyncIterator[Harness]:
    run = f"r{next(_ids)}"
    catalog = _catalog(sims, run)
    settings = Settings(
        redis_url=redis_server.url,
        retry_base_seconds=0.2,
        retry_max_seconds=2.0,
        breaker_cooldown_seconds=1.0,
        breaker_cooldown_max_seconds=4.0,
    )
    session: aiohttp.ClientSession = make_http_session(256, 30)
    backends: dict[str, RemoteBackend] = {}

    async def backend_for(entry: ModelEntry) -> RemoteBackend:
        return backends.setdefault(entry.name, make_remote_backend(entry, session))

    control = TrafficControl(settings, catalog, traffic_redis(redis_server.url), backend_for)
    yield Harness(control, catalog, run)
    await control.aclose()
    await session.close()


async def test_declared_limits_are_kept_with_almost_no_429s(
    harness: Harness, sims: dict[str, SimServer]
) -> None:
    # Given a provider enforcing 1,200 RPM and a model declaring it
    before = sims["limited"].stats()["by_status"]
    # When 150 jobs are sent at once
    served = await harness.serve("limited", 150)
    after = sims["limited"].stats()["by_status"]
    # Then every one is served, with under 1% 429s
    assert len(served) == 150
    ok = after.get("200", 0) - before.get("200", 0)
    limited = after.get("429", 0) - before.get("429", 0)
    assert ok == 150
    assert limited <= 1
    assert harness.waits["rate_limited"] > 0  # they waited instead


async def test_a_dead_model_falls_back_after_few_calls(
    harness: Harness, sims: dict[str, SimServer]
) -> None:
    dead_before = sims["dead"].calls()
    served = await harness.serve("dead", 60)
    assert {s.entry.name for s in served} == {f"fallback-{harness.run}"}
    assert sims["dead"].calls() - dead_before <= 20


async def test_an_outage_makes_jobs_wait_not_fail(
    harness: Harness, sims: dict[str, SimServer]
) -> None:
    # Given a provider that goes down for 6 s
    sims["outage"].configure(down_for=6)
    before = sims["outage"].calls(503)
    # When 40 jobs are sent
    served = await harness.serve("outage", 40)
    # Then all are served, the down provider got a bounded number of calls, jobs waited
    assert len(served) == 40
    assert sims["outage"].calls(503) - before <= 40 + 10
    assert harness.waits["circuit_open"] > 0


async def test_load_spreads_over_deployments_by_their_limits(
    harness: Harness, sims: dict[str, SimServer]
) -> None:
    served = await harness.serve("spread", 180)
    by_deployment = Counter(s.deployment for s in served)
    fast, slow = by_deployment[f"fast-{harness.run}"], by_deployment[f"slow-{harness.run}"]
    assert fast + slow == 180
    assert 1.4 <= fast / slow <= 2.8  # limits 1,200 and 600 RPM
    assert sims["fast"].calls(429) + sims["slow"].calls(429) <= 2


async def test_undeclared_limits_are_discovered(
    harness: Harness, sims: dict[str, SimServer]
) -> None:
    before = sims["limited"].calls(429)
    served = await harness.serve("undeclared", 150)
    assert len(served) == 150
    assert sims["limited"].calls(429) - before <= 150 * 0.05


async def test_an_interactive_job_among_bulk_ones_survives_an_outage(
    harness: Harness, sims: dict[str, SimServer]
) -> None:
    sims["outage"].configure(down_for=6)
    bulk = asyncio.create_task(harness.serve("outage", 60, band=5))
    interactive = await asyncio.wait_for(harness.serve("outage", 1, band=0, interactive=True), 60)
    assert len(interactive) == 1 and len(await bulk) == 60
