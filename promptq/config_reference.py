"""docs/configuration.md, generated from the Settings class and the models-file schema:
`python -m promptq.config_reference > docs/configuration.md`. A test fails when they drift.

A field's description is its pydantic `description`, else the comment on or right above its
line in the source, else the comment that heads its group of fields."""

from __future__ import annotations

import inspect
import io
import re
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from promptq.catalog import Backend, ModelEntry
from promptq.config import Settings

__all__ = ["render"]

_FIELD_LINE = re.compile(r"^\s{4}(\w+)\s*:")
# Fields whose source carries no comment of their own yet.
_SETTING_NOTES = {
    "environment": "`production` refuses default secrets (a webhook secret is required).",
    "home": "Where promptq keeps local state: the default SQLite file, converted built-in "
    "models, the demo's files.",
    "database_url": "`postgresql://...` or `sqlite:///...`;",
    "redis_url": "The Redis that carries the queues (Celery's broker).",
    "models_file": "The models file (below); unset: the bundled one with the demo's model.",
    "sweep_interval_seconds": "How often the sweeper looks for expired leases, lost "
    "messages and expired batches (queued jobs past their deadline: every second, or this "
    "if shorter).",
    "requeue_after_seconds": "A queued job whose message has not been taken for this long "
    "is published again (Redis lost it).",
}
_MODEL_FIELD_NOTES = {
    "name": "What clients send as `model`; unique in the file.",
    "backend": "Which worker runs it (see Backends below).",
    "upstream": "The model name sent to the provider; defaults to `name`.",
    "base_url": "The provider's API root (openai/anthropic backends), e.g. "
    "`https://api.openai.com/v1`.",
    "api_key_env": "The environment variable holding the provider key; the key itself "
    "never goes in the file.",
    "input_per_mtok": "USD per million prompt tokens.",
    "output_per_mtok": "USD per million completion tokens.",
    "rpm": "Requests per minute allowed upstream.",
    "tpm": "Tokens per minute allowed upstream.",
    "source": "vllm: a Hugging Face model directory, a Hugging Face id, or a built-in "
    "model (`smollm2-135m`).",
    "max_model_len": "vllm: the longest prompt plus completion, in tokens.",
    "max_num_seqs": "vllm: sequences the engine runs in one batch.",
    "dtype": "vllm: weight dtype (`auto`, `bfloat16`, `float16`, `float32`).",
    "gpu_memory_utilization": "vllm on a GPU: the share of GPU memory the engine may take "
    "(vLLM's default 0.9).",
    "cpu_kvcache_gib": "vllm's CPU build: the KV cache size in GiB.",
}
_CLI_VARIABLES = (
    ("PROMPTQ_API_URL", "`http://127.0.0.1:8000`", "The API the client commands talk to."),
    ("PROMPTQ_API_KEY", "", "The API key of the client commands (`--api-key`)."),
    ("PROMPTQ_LOG_LEVEL", "`info`", "Log level of every process (`--log-level`)."),
    ("PROMPTQ_DEBUG", "", "`1`: tracebacks instead of one-line errors (`--debug`)."),
)
_DEPLOY_VARIABLES = (
    ("PROMPTQ_VENV", "bin/bootstrap", "The virtualenv it makes (default `./.venv`)."),
    (
        "PROMPTQ_EXTRAS",
        "bin/bootstrap",
        "pip extras to install (default `vllm,dev` on an "
        'NVIDIA host, `cpu,dev` elsewhere; `""` for promptq alone).',
    ),
    ("PYTHON", "bin/bootstrap", "The interpreter that makes the virtualenv (`python3`)."),
    (
        "MODELS_TOML",
        "docker compose",
        "The host's models file to mount (default `./models.example.toml`).",
    ),
    (
        "FLOWER_BASIC_AUTH",
        "docker compose",
        "Flower's `user:password`; generated on first start when unset.",
    ),
    ("STATE_DIR", "image entrypoint", "Where generated secrets are kept (`/var/lib/promptq`)."),
)


@dataclass(frozen=True)
class _Comment:
    """What the source says about a field: the comment block that starts its group (on the
    group's first field only), whether a group covers it, and its own inline comment."""

    heading: str
    grouped: bool
    inline: str


def _comments(cls: type) -> dict[str, _Comment]:
    """Each field's comments in `cls`'s source."""
    source = inspect.getsource(cls)
    found: dict[str, _Comment] = {}
    block: list[str] = []  # the comment lines right above the current line
    grouped = False
    inline = _inline_comments(source)
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD_LINE.match(line)
        if match and match.group(1) != "model_config":
            grouped = grouped or bool(block)
            found[match.group(1)] = _Comment(" ".join(block), grouped, inline.get(number, ""))
        block = []
    return found


def _inline_comments(source: str) -> dict[int, str]:
    """Comments that end a line of code, by line number."""
    comments: dict[int, str] = {}
    previous_line = 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.start[0] == previous_line:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
            previous_line = token.start[0]
    return comments


def _type(annotation: Any) -> str:
    """A reader's name for a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        kinds = [_type(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" (optional)" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return "list (JSON, or comma-separated)"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    names = {
        str: "text",
        int: "integer",
        float: "number",
        bool: "true/false",
        Path: "path",
        Decimal: "number",
        SecretStr: "secret",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _limits(field: FieldInfo) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}
    parts = []
    for item in field.metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
        return f"`{str(value).replace(str(Path.home()), '~')}`"
    value = field.default
    if value is None:
        return "unset"
    if value == "":
        return '`""`'
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def _rows(model: type[BaseModel], notes: dict[str, str], name: Any) -> Iterator[str]:
    """Table rows: a group's comment as a row of its own, then one row per field."""
    comments = _comments(model)
    empty = _Comment("", False, "")
    for field_name, field in model.model_fields.items():
        comment = comments.get(field_name, empty)
        if comment.heading:
            yield f"| *{comment.heading}* | | | |"
        parts = (field.description or notes.get(field_name, ""), comment.inline)
        description = " ".join(p for p in parts if p)
        kind = _type(field.annotation)
        if limits := _limits(field):
            kind += f", {limits}"
        yield f"| `{name(field_name)}` | {kind} | {_default(field)} | {description} |"


def undocumented() -> list[str]:
    """Fields with no description, no comment and no commented group (the drift test keeps
    this empty)."""
    missing = []
    for model, notes in ((Settings, _SETTING_NOTES), (ModelEntry, _MODEL_FIELD_NOTES)):
        comments = _comments(model)
        for name, field in model.model_fields.items():
            comment = comments.get(name)
            said = comment is not None and (comment.grouped or comment.inline)
            if not (field.description or notes.get(name) or said):
                missing.append(f"{model.__name__}.{name}")
    return missing


def _backends() -> Iterator[str]:
    source = inspect.getsource(Backend)
    notes = re.findall(r"#:\s*(.+)\n\s+(\w+) = \"(\w+)\"", source)
    for note, _, value in notes:
        yield f"- `{value}`: {note}"


def render() -> str:
    """The whole of docs/configuration.md."""
    head = "| Variable | Type | Default | Description |\n|---|---|---|---|"
    model_head = "| Field | Type | Default | Description |\n|---|---|---|---|"
    settings_rows = "\n".join(_rows(Settings, _SETTING_NOTES, lambda n: f"PROMPTQ_{n.upper()}"))
    model_rows = "\n".join(_rows(ModelEntry, _MODEL_FIELD_NOTES, str))
    cli_rows = "\n".join(f"| `{n}` | {d or ''} | {t} |" for n, d, t in _CLI_VARIABLES)
    deploy_rows = "\n".join(f"| `{n}` | {w} | {t} |" for n, w, t in _DEPLOY_VARIABLES)
    backends = "\n".join(_backends())
    return f"""# Configuration reference

<!-- Generated by `python -m promptq.config_reference > docs/configuration.md` from
promptq/config.py (Settings) and promptq/catalog.py (ModelEntry); do not edit by hand. -->

promptq is configured by one settings object, read from `PROMPTQ_*` environment variables,
and one models file (TOML) that lists every model clients may name. With neither set,
everything runs on one machine: a SQLite file under `PROMPTQ_HOME`, Redis on
127.0.0.1:6379, and the bundled models file (the demo's small model on vLLM).

## Settings (environment variables)

{head}
{settings_rows}

In production (`PROMPTQ_ENVIRONMENT=production`) `PROMPTQ_WEBHOOK_SECRET` is required;
`python -m promptq.webhooks` prints a new one. Database URLs are plain
(`postgresql://user:pass@host/db`, `sqlite:///path`); promptq picks the driver.

### Read by the command line

| Variable | Default | Description |
|---|---|---|
{cli_rows}

### Read by the install and deployment scripts

| Variable | Read by | Description |
|---|---|---|
{deploy_rows}

## The models file

`PROMPTQ_MODELS_FILE` names a TOML file with one `[[models]]` table per model. Unknown
fields are refused, and an error names the entry and the field.

{model_head}
{model_rows}

### Backends

{backends}

### Example

```toml
[[models]]
name = "gpt-4o-mini"
backend = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
input_per_mtok = 0.15
output_per_mtok = 0.60

[[models]]
name = "qwen2.5-7b"
backend = "vllm"
source = "/models/Qwen2.5-7B-Instruct"
max_model_len = 8192
max_num_seqs = 128
gpu_memory_utilization = 0.9
```
"""


if __name__ == "__main__":
    sys.stdout.write(render())
