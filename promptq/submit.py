"""`promptq submit` and `promptq results`: a batch file in, its result lines out."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from promptq.client import Client
from promptq.progress import follow

__all__ = ["download_results", "follow", "submit_file"]


def _with_model(path: Path, model: str) -> Path:
    """A copy of the file with every line's body.model set; unparsable lines kept as they are
    (the server fails them per line)."""
    out = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    with path.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for raw in src:
            try:
                line = json.loads(raw)
                line.setdefault("body", {})["model"] = model
                raw = json.dumps(line) + "\n"
            except (ValueError, AttributeError, TypeError):
                pass
            dst.write(raw)
    return out


def submit_file(
    api_url: str,
    api_key: str,
    path: Path,
    *,
    model: str | None = None,
    priority: int | None = None,
    wait: bool = False,
    max_cost_usd: float | None = None,
) -> dict[str, Any]:
    """Upload `path`, start a batch, and (with `wait`) follow it to the end."""
    client = Client(api_url, api_key)
    upload = _with_model(path, model) if model else path
    try:
        file = client.upload(upload)
        batch = client.create_batch(file["id"], priority=priority, max_cost_usd=max_cost_usd)
        # It answered `validating`: wait for its lines to be checked, so a file refused as
        # a whole (estimate_too_high, no_valid_lines ...) is an error here.
        batch = client.validated(batch["id"])
        if wait:
            batch = follow(client, batch)
        return batch
    finally:
        client.close()
        if upload is not path:
            upload.unlink()


def download_results(api_url: str, api_key: str, batch_id: str, output: Path) -> int:
    """Write the output lines, then the error lines, of a batch to `output`."""
    client = Client(api_url, api_key)
    try:
        batch = client.get(batch_id)
        with output.open("wb") as out:
            for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
                if file_id:
                    client.download(file_id, out)
    finally:
        client.close()
    with output.open("rb") as fh:
        return sum(1 for _ in fh)
