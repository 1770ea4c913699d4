"""Session-wide real services: a fresh Postgres database, a private Redis server, the
simulated provider, and the API, a remote worker and the scheduler as child processes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import Child, free_port, wait_http
from tests.stack import RedisServer, Stack, create_database, drop_database, make_key

SIM_PRICES = {"input": "0.15", "output": "0.60"}
SIM_KEY = "sim-secret"
# The test deployment's webhook signing secret; receivers verify with it.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"promptq test webhook secret, 32B").decode()

__all__ = ["SIM_PRICES", "WEBHOOK_SECRET", "make_key"]


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new database for this test session, migrated to head, dropped at the end."""
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sim_url(log_dir: Path) -> Iterator[str]:
    """The simulated provider over real HTTP on 127.0.0.1."""
    port = free_port()
    proc = Child.promptq(
        "sim", ["sim-provider", "--port", str(port), "--api-key", SIM_KEY], {}, log_dir
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models")
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory, sim_url: str) -> Path:
    path = tmp_path_factory.mktemp("conf") / "models.toml"
    path.write_text(f"""{sim_gpt_toml(sim_url)}
[[models]]
name = "sim-claude"
backend = "anthropic"
base_url = "{sim_url}"
api_key_env = "SIM_PROVIDER_KEY"
input_per_mtok = 3
output_per_mtok = 15
""")
    return path


def sim_gpt_toml(sim_url: str) -> str:
    """The models-file entry for `sim-gpt`, the simulated provider's OpenAI-style model."""
    return f"""
[[models]]
name = "sim-gpt"
backend = "openai"
base_url = "{sim_url}/v1"
api_key_env = "SIM_PROVIDER_KEY"
upstream = "gpt-sim"
input_per_mtok = {SIM_PRICES["input"]}
output_per_mtok = {SIM_PRICES["output"]}
"""


def stack_env(pg_url: str, redis_url: str, models_file: Path, home: Path) -> dict[str, str]:
    """The environment every promptq process of a test deployment runs with."""
    return {
        "PROMPTQ_DATABASE_URL": pg_url,
        "PROMPTQ_REDIS_URL": redis_url,
        "PROMPTQ_MODELS_FILE": str(models_file),
        "PROMPTQ_HOME": str(home),
        "PROMPTQ_RETRY_BASE_SECONDS": "0.05",
        "PROMPTQ_RETRY_MAX_SECONDS": "0.5",
        "PROMPTQ_SWEEP_INTERVAL_SECONDS": "1",
        "PROMPTQ_LEASE_SECONDS": "6",
        "PROMPTQ_VISIBILITY_TIMEOUT_SECONDS": "10",
        "PROMPTQ_MAX_ATTEMPTS": "4",
        # Provider faults: a line failing 4 times in a row (500x4) ends failed.
        "PROMPTQ_FAULT_MAX_RETRIES": "3",
        "SIM_PROVIDER_KEY": SIM_KEY,
        "PROMPTQ_LOG_LEVEL": "info",
        # Webhook receivers in tests listen on 127.0.0.1; retries are quick.
        "PROMPTQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PROMPTQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "PROMPTQ_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "PROMPTQ_WEBHOOK_RETRY_MAX_SECONDS": "0.2",
        "PROMPTQ_WEBHOOK_POLL_SECONDS": "0.1",
    }


@pytest.fixture(scope="session")
def env(
    pg_url: str,
    redis_server: RedisServer,
    models_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    return stack_env(pg_url, redis_server.url, models_file, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def stack(env: dict[str, str], log_dir: Path) -> Iterator[Stack]:
    deployment = Stack(env, log_dir)
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def api_url(stack: Stack) -> str:
    return stack.api()


@pytest.fixture(scope="session")
def remote_worker(stack: Stack) -> Child:
    return stack.worker()


@pytest.fixture(scope="session")
def scheduler(stack: Stack) -> Child:
    return stack.scheduler()


@pytest.fixture(scope="session")
def api_key(pg_url: str) -> str:
    return make_key(pg_url, "tenant-main")


@pytest.fixture
def client(api_url: str, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        yield http


@pytest.fixture
def pipeline(api_url: str, remote_worker: Child, scheduler: Child) -> str:
    """The whole pipeline is up: API, a remote worker and the scheduler."""
    assert remote_worker.alive(), remote_worker.log_text()
    return api_url
