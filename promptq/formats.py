"""OpenAI's wire formats: chat.completion bodies and batch output/error lines."""

from __future__ import annotations

import time
from typing import Any

from promptq.workers.completion import Completion

__all__ = ["batch_error_line", "batch_output_line", "chat_completion_body"]


def chat_completion_body(job_id: str, model: str, completion: Completion) -> dict[str, Any]:
    """A `chat.completion` object for a backend that does not speak OpenAI natively."""
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def batch_output_line(job_id: str, custom_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch output file: a request that got a 200."""
    return {
        "id": f"batch_req_{job_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": job_id, "body": body},
        "error": None,
    }


def batch_error_line(
    job_id: str, custom_id: str | None, code: str, message: str, status_code: int | None
) -> dict[str, Any]:
    """One line of a batch error file: a provider refusal keeps its HTTP status and body,
    a line promptq could not run has `response: null` and an `error`."""
    error = {"code": code, "message": message}
    if status_code is None:
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
            "status_code": status_code,
            "request_id": job_id,
            "body": {"error": {**error, "type": "invalid_request_error", "param": None}},
        },
        "error": None,
    }
