"""`promptq submit` and `promptq results`: a batch file in, its result lines out."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from promptq.client import Client

__all__ = ["download_results", "progress_bar", "submit_file"]


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


def progress_bar() -> Progress:
    """The bar `submit --wait` and the demo show."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),  # stdout stays data
    )


def submit_file(
    api_url: str,
    api_key: str,
    path: Path,
    *,
    model: str | None = None,
    priority: int | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Upload `path`, start a batch, and (with `wait`) follow it to the end."""
    client = Client(api_url, api_key)
    upload = _with_model(path, model) if model else path
    try:
        file = client.upload(upload)
        batch = client.create_batch(file["id"], priority=priority)
        if wait:
            batch = follow(client, batch)
        return batch
    finally:
        client.close()
        if upload is not path:
            upload.unlink()


def follow(client: Client, batch: dict[str, Any]) -> dict[str, Any]:
    """Poll a batch to its end behind a progress bar."""
    with progress_bar() as bar:
        task = bar.add_task(batch["id"], total=batch["request_counts"]["total"], detail="")

        def show(current: dict[str, Any]) -> None:
            counts = current["request_counts"]
            done = counts["total"] - _open(counts)
            bar.update(
                task,
                completed=done,
                detail=f"{current['status']} ok={counts['completed']} failed={counts['failed']}",
            )

        return client.wait(batch["id"], show)


def _open(counts: dict[str, int]) -> int:
    return counts["total"] - sum(
        counts.get(k, 0) for k in ("completed", "failed", "cancelled", "expired")
    )


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
