"""Deployments and fallbacks in the models file."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptq.catalog import load_catalog
from promptq.errors import ConfigError

MODELS = """
[[models]]
name = "gpt-4o-mini"
backend = "openai"
upstream = "gpt-4o-mini"
fallbacks = ["claude-haiku"]
context_window_fallbacks = ["gpt-4.1"]
[[models.deployments]]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_KEY_A"
rpm = 500
tpm = 200000
[[models.deployments]]
name = "relay"
base_url = "https://relay.example/v1"
api_key_env = "RELAY_KEY"
rpm = 300
weight = 2

[[models]]
name = "claude-haiku"
backend = "anthropic"
base_url = "https://api.anthropic.com"
rpm = 50
max_concurrency = 4

[[models]]
name = "gpt-4.1"
backend = "openai"
base_url = "https://api.openai.com/v1"
"""


def test_deployments_are_listed_with_their_limits(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, MODELS))
    first, relay = catalog["gpt-4o-mini"].all_deployments()
    assert (first.name, first.rpm, first.tpm) == ("gpt-4o-mini/0", 500, 200000)
    assert (relay.name, relay.rpm, relay.tpm, relay.weight) == ("relay", 300, None, 2.0)
    assert catalog["gpt-4o-mini"].fallbacks == ("claude-haiku",)
    assert catalog["gpt-4o-mini"].context_window_fallbacks == ("gpt-4.1",)


def test_the_flat_form_is_one_deployment(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, MODELS))
    (only,) = catalog["claude-haiku"].all_deployments()
    assert (only.name, only.base_url, only.rpm, only.max_concurrency) == (
        "claude-haiku/0",
        "https://api.anthropic.com",
        50,
        4,
    )


def test_an_unknown_fallback_is_refused_by_name(tmp_path: Path) -> None:
    text = MODELS.replace('fallbacks = ["claude-haiku"]', 'fallbacks = ["nope"]')
    with pytest.raises(ConfigError, match=r"'gpt-4o-mini': fallbacks names unknown model.*'nope'"):
        load_catalog(_write(tmp_path, text))


def test_flat_limits_beside_deployments_are_refused(tmp_path: Path) -> None:
    text = MODELS.replace('upstream = "gpt-4o-mini"', 'upstream = "gpt-4o-mini"\nrpm = 5')
    with pytest.raises(ConfigError, match="rpm: set these on each"):
        load_catalog(_write(tmp_path, text))


def test_a_model_cannot_fall_back_to_itself(tmp_path: Path) -> None:
    text = MODELS.replace('fallbacks = ["claude-haiku"]', 'fallbacks = ["gpt-4o-mini"]')
    with pytest.raises(ConfigError, match="own fallback"):
        load_catalog(_write(tmp_path, text))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path
