"""What users deploy. There is no Docker engine here, so docker-compose.yml is checked as
compose would read it: it starts from a fresh clone (no .env, no models.toml), every
command it runs is a real promptq command, every PROMPTQ_ variable a real setting, every
file it mounts exists; the image's entrypoint makes the secrets a deployment lacks, and
`docker compose run --rm api keys create NAME` gives a working key. Flower shows a live
worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from promptq.catalog import Backend, load_catalog
from promptq.config import Settings
from tests.procs import Child, free_port, wait_for, wait_http

ROOT = Path(__file__).resolve().parents[2]
# Variables the CLI reads besides the Settings fields.
CLI_VARIABLES = {"PROMPTQ_LOG_LEVEL", "PROMPTQ_API_URL", "PROMPTQ_API_KEY", "PROMPTQ_DEBUG"}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, for the forms this file may use."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if op and op.endswith("?") and not env.get(name):
            raise AssertionError(f"compose refuses to start without {name}: {arg}")
        return env.get(name) or (arg if op and op.endswith("-") else "")

    return INTERPOLATION.sub(substitute, value)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The services as `docker compose config` would give them on a fresh clone (no .env)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    resolved: dict[str, dict[str, Any]] = interpolate(compose["services"], {})
    return resolved


def promptq_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("image", "").startswith("promptq")}


def test_a_fresh_clone_starts_every_part_and_the_gpu_worker_only_on_request(
    services: dict[str, dict[str, Any]],
) -> None:
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker-remote",
        "scheduler",
        "flower",
        "sim-provider",
    } <= default
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    for name in default:  # nothing started by default needs a GPU
        assert "devices" not in str(services[name].get("deploy", {})), name
    for service in promptq_services(services).values():
        assert service["env_file"] == [{"path": ".env", "required": False}]


def test_every_command_is_a_real_command(services: dict[str, dict[str, Any]]) -> None:
    for name, service in promptq_services(services).items():
        # Appending --help makes the CLI check every option before it and exit 0.
        command = service["command"]
        module = ["celery"] if command[0] == "celery" else ["promptq"]
        args = command[1:] if command[0] == "celery" else command
        done = subprocess.run(
            [sys.executable, "-m", *module, *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (name, done.stdout + done.stderr)


def test_every_variable_is_a_real_setting_with_a_valid_value(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    for name, service in promptq_services(services).items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        unknown = {k for k in env if k.startswith("PROMPTQ_") and k not in CLI_VARIABLES} - {
            f"PROMPTQ_{field.upper()}" for field in Settings.model_fields
        }
        assert not unknown, (name, unknown)
        # The entrypoint supplies the webhook secret a production deployment requires
        secret = "whsec_" + "A" * 44
        values = {k.removeprefix("PROMPTQ_").lower(): v for k, v in env.items()}
        values = {k: v for k, v in values.items() if k in Settings.model_fields}
        Settings(**{**values, "webhook_secret": secret})  # raises if a value is invalid
    example = (ROOT / ".env.example").read_text()
    for variable in re.findall(r"^#? ?(PROMPTQ_\w+)=", example, re.M):
        field = variable.removeprefix("PROMPTQ_").lower()
        assert field in Settings.model_fields or variable in CLI_VARIABLES, variable


def test_mounted_files_exist_and_the_default_model_is_served_by_compose(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                # A missing source would be mounted as an empty directory
                assert (ROOT / source).exists(), (name, volume)
    api = services["api"]
    mounted = next(v for v in api["volumes"] if v.endswith(":/etc/promptq/models.toml:ro"))
    catalog = load_catalog(ROOT / mounted.split(":")[0])
    assert api["environment"]["PROMPTQ_MODELS_FILE"] == "/etc/promptq/models.toml"
    # The default model is the simulated provider that compose itself runs: no key needed
    sim = catalog["sim"]
    url = urlsplit(sim.base_url or "")
    sim_command = services["sim-provider"]["command"]
    assert url.hostname == "sim-provider" and sim.api_key_env is None
    assert str(url.port) == sim_command[sim_command.index("--port") + 1]
    # And the GPU worker serves a vllm model of that file
    gpu_command = services["worker-gpu"]["command"]
    gpu_model = catalog[gpu_command[gpu_command.index("--model") + 1]]
    assert gpu_model.backend is Backend.VLLM


def test_volumes_mount_on_directories_the_image_gives_to_its_user(
    services: dict[str, dict[str, Any]],
) -> None:
    # A named volume starts with the ownership of the image's directory; one the image does
    # not make would be root's, and promptq (not root) could not write to it.
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, service in promptq_services(services).items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/")):
                assert target in dockerfile, (name, volume)


def test_the_image_runs_promptq_through_the_entrypoint() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/app/bin/docker-entrypoint"]' in dockerfile
    assert "COPY bin ./bin" in dockerfile
    assert os.access(ROOT / "bin" / "docker-entrypoint", os.X_OK)


def test_compose_run_api_keys_create_gives_a_working_key(
    services: dict[str, dict[str, Any]],
    env: dict[str, str],
    api_url: str,
    tmp_path: Path,
) -> None:
    # Given the api service's environment, with this machine's database, Redis and paths in
    # place of compose's service names, and no webhook secret or Flower login set
    service_env = {k: str(v) for k, v in services["api"]["environment"].items()}
    service_env |= {
        "PROMPTQ_DATABASE_URL": env["PROMPTQ_DATABASE_URL"],
        "PROMPTQ_REDIS_URL": env["PROMPTQ_REDIS_URL"],
        "PROMPTQ_MODELS_FILE": str(ROOT / "models.example.toml"),
        "PROMPTQ_HOME": str(tmp_path / "home"),
    }
    state = tmp_path / "state"
    state.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTQ_", "FLOWER_"))}
    run_env = {
        **base,
        **service_env,
        "STATE_DIR": str(state),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }

    # When `docker compose run --rm api keys create NAME` runs: the entrypoint, then promptq
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "bin" / "docker-entrypoint"), "keys", "create", "compose-team"],
            capture_output=True,
            text=True,
            timeout=120,
            env=run_env,
        )

    first, second = run(), run()
    # Then it prints a key the API accepts
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip().splitlines()[0]
    response = httpx.get(f"{api_url}/v1/batches", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    # And the secrets were generated once, valid, and reused by the second container
    assert second.returncode == 0, second.stderr
    secret = (state / "webhook-secret").read_text().strip()
    Settings(environment="production", webhook_secret=secret)
    user, _, password = (state / "flower-basic-auth").read_text().strip().partition(":")
    assert user == "admin" and len(password) >= 16
    assert sorted(p.name for p in state.iterdir()) == ["flower-basic-auth", "webhook-secret"]


def test_flower_lists_the_live_worker(
    remote_worker: Child, env: dict[str, str], log_dir: Path
) -> None:
    # Given Flower on the broker the workers use
    port = free_port()
    flower = Child(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            f"--broker={env['PROMPTQ_REDIS_URL']}",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--basic-auth=ops:secret",
        ],
        {},
        log_dir,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthcheck", timeout=60)

        # When it has heard from the workers
        def listed() -> bool:
            workers = httpx.get(
                f"http://127.0.0.1:{port}/api/workers",
                params={"refresh": "1"},
                auth=("ops", "secret"),
                timeout=10,
            ).json()
            return any(name.startswith("remote@") for name in workers)

        # Then the promptq remote worker is listed
        wait_for(listed, 60, "flower to list the worker", interval=1)
    finally:
        flower.stop()
