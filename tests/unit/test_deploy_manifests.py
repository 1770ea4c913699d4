"""deploy/: the Kubernetes manifests, KEDA, Grafana and Prometheus files parse, and every
command, option, probe path, queue and metric they name exists in promptq."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from promptq.catalog import Backend, Catalog, parse_catalog
from promptq.cli import app as cli_app
from promptq.cluster_view import ClusterCollector, ClusterSnapshot, queues_of
from promptq.metrics import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    return [c for pod in pods for c in pod["containers"]]


def _catalog(docs: list[dict[str, Any]]) -> Catalog:
    (models,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "promptq-models"
    ]
    import tomllib

    return parse_catalog(tomllib.loads(models["data"]["models.toml"]), Path("models.toml"))


def _check_command(args: list[str]) -> None:
    """The args name a real `promptq` command, and every --option is one of its options."""
    command: Any = typer.main.get_command(cli_app)
    words = list(args)
    options: set[str] = set()
    # Typer ships its own copy of click: its groups are known by their get_command.
    while words and not words[0].startswith("-") and hasattr(command, "get_command"):
        options |= {o for p in command.params for o in p.opts}
        sub = command.get_command(command.context_class(command), words.pop(0))
        assert sub is not None, f"no such command in {args}"
        command = sub
    options |= {o for p in command.params for o in p.opts}
    used = {w for w in words if w.startswith("--")}
    assert used <= options, f"{args}: unknown options {used - options}"


def _exported_metric_names() -> set[str]:
    snapshot = ClusterSnapshot(taken_at=0.0)
    text = render().decode() + "".join(
        f"# HELP {m.name} x\n" for m in ClusterCollector(snapshot).collect()
    )
    names = set(re.findall(r"^# HELP (\S+)", text, re.M))
    # Counters and histograms are queried by their sample names.
    return names | {f"{n}_{s}" for n in names for s in ("total", "bucket", "sum", "count")}


def _queries() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "promptq-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    keda = yaml.safe_load_all((K8S / "keda.yaml").read_text())
    return exprs + [t["metadata"]["query"] for d in keda for t in d["spec"]["triggers"]]


def test_every_manifest_parses_and_every_part_is_deployed() -> None:
    docs = _documents()
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert {
        "promptq-api",
        "promptq-worker-remote",
        "promptq-worker-gpu-smollm2-135m",
        "promptq-scheduler",
        "promptq-flower",
    } <= deployments
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    assert scaled == {n for n in deployments if "worker" in n}


@pytest.mark.parametrize("field", ["args", "readinessProbe", "livenessProbe", "startupProbe"])
def test_containers_and_exec_probes_run_real_promptq_commands(field: str) -> None:
    for container in _containers(_documents()):
        if field == "args":
            _check_command(container["args"])
        elif "exec" in container.get(field, {}):
            command = container[field]["exec"]["command"]
            if command[:2] == ["sh", "-c"]:  # a pipeline: check its promptq command
                found = re.search(r"(?:^|\|)\s*promptq ([^|]+)", command[2])
                assert found, command
                command = ["promptq", *shlex.split(found.group(1))]
            assert command[0] == "promptq"
            _check_command(command[1:])


def test_http_probes_ask_for_paths_the_processes_serve() -> None:
    from promptq.api.app import create_app
    from promptq.config import Settings

    api_paths = {getattr(r, "path", None) for r in create_app(Settings()).routes}
    for container in _containers(_documents()):
        for probe in ("readinessProbe", "livenessProbe"):
            get = container.get(probe, {}).get("httpGet")
            if get is None:
                continue
            served = api_paths if container["args"][0] == "api" else {"/metrics"}
            assert get["path"] in served, (container["name"], get)


def test_models_queues_and_metrics_named_by_deploy_exist() -> None:
    docs = _documents()
    catalog = _catalog(docs)
    for container in _containers(docs):
        if container["args"][:2] == ["worker", "gpu"]:
            model = container["args"][container["args"].index("--model") + 1]
            assert catalog[model].backend is Backend.VLLM
    exported = _exported_metric_names()
    queues = set(queues_of(catalog))
    for query in _queries():
        metrics = set(re.findall(r"\b(promptq_[a-z_]+)", query))
        assert metrics and metrics <= exported, (query, metrics - exported)
        for queue in re.findall(r'queue="([^"]+)"', query):
            assert queue in queues, query


def test_compose_monitoring_profile_scrapes_services_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (ROOT / mount.split(":")[0]).exists(), mount
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert {t.split(":")[0] for t in targets} <= set(services)
