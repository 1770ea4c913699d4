"""A small synchronous client of promptq's API, for the CLI and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

__all__ = ["TERMINAL_BATCH", "ApiAnswerError", "BatchRefused", "Client"]

TERMINAL_BATCH = ("completed", "failed", "expired", "cancelled")


class ApiAnswerError(RuntimeError):
    """promptq's API answered with an error (its JSON `code` and `message` when it sent them)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message


class BatchRefused(RuntimeError):
    """A batch failed as a whole when its file was validated (its `errors`)."""

    def __init__(self, batch: dict[str, Any]) -> None:
        errors = (batch.get("errors") or {}).get("data") or [{}]
        self.batch_id = str(batch["id"])
        self.code = str(errors[0].get("code", "failed"))
        self.message = str(errors[0].get("message", ""))
        super().__init__(f"batch {self.batch_id} failed: {self.code}: {self.message}")


class Client:
    """Upload, create a batch, poll it and fetch its results over HTTP."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 300.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}"},
        )

    def close(self) -> None:
        self._http.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", " ".join(response.text[:300].split())
            raise ApiAnswerError(response.status_code, code, message)
        data: dict[str, Any] = response.json()
        return data

    def upload(self, path: Path | str, stream: BinaryIO | None = None) -> dict[str, Any]:
        """Upload a JSONL batch input file."""
        path = Path(path)
        with stream or path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/jsonl")}
            return self._json(self._http.post("/v1/files", files=files, data={"purpose": "batch"}))

    def create_batch(
        self,
        file_id: str,
        priority: int | None = None,
        metadata: dict[str, str] | None = None,
        max_cost_usd: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": metadata,
        }
        if priority is not None:
            body["priority"] = priority
        if max_cost_usd is not None:  # a file estimated higher fails (estimate_too_high)
            body["max_cost_usd"] = max_cost_usd
        return self._json(self._http.post("/v1/batches", json=body))

    def get(self, object_id: str) -> dict[str, Any]:
        """A batch (batch_…) or a job (job_…)."""
        kind = "batches" if object_id.startswith("batch_") else "jobs"
        return self._json(self._http.get(f"/v1/{kind}/{object_id}"))

    def validated(self, batch_id: str, interval: float = 0.2) -> dict[str, Any]:
        """Poll a new batch until its lines are checked and stored (no longer `validating`);
        raises BatchRefused if its file failed as a whole."""
        while True:
            batch = self.get(batch_id)
            if batch["status"] == "failed" and batch.get("errors"):
                raise BatchRefused(batch)
            if batch["status"] != "validating":
                return batch
            time.sleep(interval)

    def wait(
        self, batch_id: str, on_progress: Callable[[dict[str, Any]], None], interval: float = 0.5
    ) -> dict[str, Any]:
        """Poll a batch until it is terminal, reporting each poll."""
        while True:
            batch = self.get(batch_id)
            on_progress(batch)
            if batch["status"] in TERMINAL_BATCH:
                return batch
            time.sleep(interval)

    def lines(self, file_id: str) -> Iterator[bytes]:
        """A file's content, line by line, streamed."""
        with self._http.stream("GET", f"/v1/files/{file_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            for line in response.iter_lines():
                yield line.encode()

    def download(self, file_id: str, out: BinaryIO) -> int:
        """Write a file's content to `out`; returns the bytes written."""
        written = 0
        with self._http.stream("GET", f"/v1/files/{file_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            for chunk in response.iter_bytes():
                out.write(chunk)
                written += len(chunk)
        return written
