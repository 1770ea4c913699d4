"""`promptq sim-provider` takes every option of `python -m promptq.sim_provider`."""

from __future__ import annotations

import dataclasses
import typing

import click
import pytest
import typer
from click.testing import CliRunner

from promptq.cli import app
from promptq.sim_provider import SimConfig, server

# The command alone: the app's callback would point the process's logging at the runner's
# streams, which close after each run.
COMMAND = typing.cast(click.Group, typer.main.get_command(app)).commands["sim-provider"]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, SimConfig]]:
    calls: list[tuple[str, int, SimConfig]] = []

    def serve(host: str, port: int, config: SimConfig) -> None:
        calls.append((host, port, config))

    monkeypatch.setattr(server, "serve", serve)
    return calls


def test_cli_passes_limits_and_outages_to_the_simulated_provider(
    served: list[tuple[str, int, SimConfig]],
) -> None:
    # Given the command line of a provider with enforced limits and an outage
    argv = ["--port", "9300", "--rpm", "600", "--tpm", "90000"]
    argv += ["--down-for", "2.5", "--fail-status", "502", "--slow-ms", "40", "--latency-ms", "5"]

    # When `promptq sim-provider` runs it
    result = CliRunner().invoke(COMMAND, argv)

    # Then the provider is served with every one of those settings
    assert result.exit_code == 0, result.output
    (host, port, config) = served[0]
    assert (host, port) == ("127.0.0.1", 9300)
    assert config == SimConfig(
        rpm=600, tpm=90000, down_for=2.5, fail_status=502, slow_ms=40.0, latency_ms=5.0
    )


def test_cli_help_lists_every_setting() -> None:
    # When the help of `promptq sim-provider` is asked for
    result = CliRunner().invoke(COMMAND, ["--help"])

    # Then it lists an option for every setting of the simulated provider
    assert result.exit_code == 0
    for field in dataclasses.fields(SimConfig):
        assert f"--{field.name.replace('_', '-')}" in result.output


def test_cli_refuses_a_bad_setting(served: list[tuple[str, int, SimConfig]]) -> None:
    # When the command line asks for a negative limit
    result = CliRunner().invoke(COMMAND, ["--rpm", "-5"])

    # Then nothing is served and the command fails with a usage error
    assert result.exit_code == 2
    assert not served
