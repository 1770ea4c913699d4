"""docs/configuration.md is generated from the Settings class and the models-file schema;
it fails here when either changes and the document was not regenerated."""

from __future__ import annotations

from pathlib import Path

from promptq.catalog import ModelEntry
from promptq.config import Settings
from promptq.config_reference import render, undocumented

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = "regenerate it: python -m promptq.config_reference > docs/configuration.md"


def test_the_configuration_reference_matches_the_code() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), REGENERATE


def test_every_setting_and_models_file_field_is_described() -> None:
    text = render()
    for name in Settings.model_fields:
        assert f"`PROMPTQ_{name.upper()}`" in text
    for name in ModelEntry.model_fields:
        assert f"| `{name}` |" in text
    assert undocumented() == [], "give these fields a comment or a description"
