"""Session-wide real services: a fresh Postgres database, a private Redis server, the
simulated provider, and the API, remote worker and scheduler as child processes."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from promptq.db import create_sync_engine
from promptq.migrate import upgrade
from tests.procs import Proc, free_port, redis_server_binary, wait_for, wait_http

PG_ADMIN_URL = os.environ.get("PROMPTQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SIM_PRICES = {"input": "0.15", "output": "0.60"}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new database for this test session, migrated to head, dropped at the end."""
    name = f"promptq_test_{secrets.token_hex(4)}"
    admin = create_sync_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class RedisServer:
    """A private redis-server, so tests may flush or restart it."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = Proc("redis", args, {}, self.log_dir)
        wait_for(self.ping, 15, "redis")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()


@pytest.fixture(scope="session")
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sim_url(log_dir: Path) -> Iterator[str]:
    """The simulated provider over real HTTP on 127.0.0.1."""
    port = free_port()
    proc = Proc.promptq(
        "sim", ["sim-provider", "--port", str(port), "--api-key", "sim-secret"], {}, log_dir
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models")
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory, sim_url: str) -> Path:
    path = tmp_path_factory.mktemp("conf") / "models.toml"
    path.write_text(f"""
[[models]]
name = "sim-gpt"
backend = "openai"
base_url = "{sim_url}/v1"
api_key_env = "SIM_PROVIDER_KEY"
upstream = "gpt-sim"
input_per_mtok = {SIM_PRICES["input"]}
output_per_mtok = {SIM_PRICES["output"]}

[[models]]
name = "sim-claude"
backend = "anthropic"
base_url = "{sim_url}"
api_key_env = "SIM_PROVIDER_KEY"
input_per_mtok = 3
output_per_mtok = 15
""")
    return path


@pytest.fixture(scope="session")
def env(
    pg_url: str,
    redis_server: RedisServer,
    models_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment every promptq process of the session runs with."""
    return {
        "PROMPTQ_DATABASE_URL": pg_url,
        "PROMPTQ_REDIS_URL": redis_server.url,
        "PROMPTQ_MODELS_FILE": str(models_file),
        "PROMPTQ_HOME": str(tmp_path_factory.mktemp("home")),
        "PROMPTQ_RETRY_BASE_SECONDS": "0.05",
        "PROMPTQ_RETRY_MAX_SECONDS": "0.5",
        "PROMPTQ_SWEEP_INTERVAL_SECONDS": "1",
        "PROMPTQ_LEASE_SECONDS": "6",
        "PROMPTQ_MAX_ATTEMPTS": "4",
        "SIM_PROVIDER_KEY": "sim-secret",
        "PROMPTQ_LOG_LEVEL": "info",
    }


@pytest.fixture(scope="session")
def api_url(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc.promptq("api", ["api", "--port", str(port)], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def remote_worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir)
    yield proc
    proc.stop()


def start_worker(env: dict[str, str], log_dir: Path, *args: str) -> Proc:
    """A remote worker subprocess, returned once it consumes its queue."""
    proc = Proc.promptq("worker", ["worker", "remote", "--concurrency", "64", *args], env, log_dir)
    try:
        wait_for(lambda: "worker.ready" in proc.output() or not proc.alive(), 60, "worker")
        assert proc.alive(), proc.output()
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="session")
def scheduler(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = Proc.promptq("scheduler", ["scheduler"], env, log_dir)
    yield proc
    proc.stop()


def make_key(pg_url: str, name: str, *, tenant: str | None = None, admin: bool = False) -> str:
    """A new API key, made the way `promptq keys create` makes one."""
    from promptq.db import Database
    from promptq.keys import create_key

    async def _create() -> str:
        db = Database(pg_url)
        try:
            async with db.session() as session:
                token, _ = await create_key(session, name, tenant=tenant, admin=admin)
                return token
        finally:
            await db.dispose()

    return asyncio.run(_create())


@pytest.fixture(scope="session")
def api_key(pg_url: str) -> str:
    return make_key(pg_url, f"tenant-{secrets.token_hex(3)}")


@pytest.fixture
def client(api_url: str, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        yield http


@pytest.fixture
def pipeline(api_url: str, remote_worker: Proc, scheduler: Proc) -> str:
    """The whole pipeline is up: API, a remote worker and the scheduler."""
    assert remote_worker.alive(), remote_worker.output()
    return api_url
