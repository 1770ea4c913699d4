"""OpenAI's batch output and error lines (the chat.completion body a worker makes is in
promptq.workers.completion)."""

from __future__ import annotations

from typing import Any

__all__ = ["batch_error_line", "batch_output_line"]


def batch_output_line(job_id: str, custom_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch output file: a request that got a 200."""
    return {
        "id": f"batch_req_{job_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": job_id, "body": body},
        "error": None,
    }


def batch_error_line(
    job_id: str, custom_id: str | None, code: str, message: str, provider_status: int | None
) -> dict[str, Any]:
    """One line of a batch error file: a provider refusal keeps its HTTP status and body,
    a line promptq could not run has `response: null` and an `error`."""
    error = {"code": code, "message": message}
    if provider_status is None:
        return {
            "id": f"batch_req_{job_id}",
            "custom_id": custom_id,
            "response": None,
            "error": error,
        }
    return {
        "id": f"batch_req_{job_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": provider_status,
            "request_id": job_id,
            "body": {"error": {**error, "type": "invalid_request_error", "param": None}},
        },
        "error": None,
    }
