"""The models file: valid entries load, a bad one fails naming the entry and the field."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from promptq.catalog import Backend, load_catalog
from promptq.errors import ConfigError, ModelNotFound

GOOD = """
[[models]]
name = "gpt-4o-mini"
backend = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
input_per_mtok = 0.15
output_per_mtok = 0.60
rpm = 500

[[models]]
name = "claude"
backend = "anthropic"
base_url = "https://api.anthropic.com"
upstream = "claude-sonnet-4-5"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_a_valid_file_lists_its_models_with_prices(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, GOOD))
    entry = catalog.require("gpt-4o-mini")
    assert entry.backend is Backend.OPENAI and entry.upstream_name == "gpt-4o-mini"
    assert catalog.require("claude").upstream_name == "claude-sonnet-4-5"
    assert entry.cost(1_000_000, 1_000_000) == Decimal("0.75")
    assert entry.cost(1234, 56) == Decimal("0.0002187000")


def test_an_unknown_model_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        load_catalog(_write(tmp_path, GOOD)).require("gpt-5")
    assert (caught.value.code, caught.value.http_status) == ("model_not_found", 400)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[models]]\nname = "x"\nbackend = "openai"\n', ["#1", "'x'", "base_url"]),
        ('[[models]]\nname = "y"\nbackend = "cohere"\nbase_url = "u"\n', ["'y'", "backend"]),
        (
            '[[models]]\nname = "z"\nbackend = "openai"\nbase_url = "u"\ninput_per_mtok = -1\n',
            ["'z'", "input_per_mtok"],
        ),
        ('[[models]]\nname = "v"\nbackend = "vllm"\n', ["'v'", "source"]),
        (
            '[[models]]\nname = "w"\nbackend = "openai"\nbase_url = "u"\nprice = 3\n',
            ["'w'", "price"],
        ),
        ("models = 3\n", ["at least one"]),
        ("[[models]\n", ["not valid TOML"]),
    ],
)
def test_a_bad_entry_fails_naming_the_entry_and_field(
    tmp_path: Path, text: str, named: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_catalog(_write(tmp_path, text))
    for word in named:
        assert word in str(caught.value)


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    entry = '[[models]]\nname = "a"\nbackend = "openai"\nbase_url = "u"\n'
    with pytest.raises(ConfigError, match="duplicate name 'a'"):
        load_catalog(_write(tmp_path, entry * 2))


def test_the_bundled_file_serves_the_small_model_on_vllm() -> None:
    entry = load_catalog(None).require("smollm2-135m")
    assert entry.backend is Backend.VLLM and entry.source == "smollm2-135m"
