"""Replies and errors in the JSON shape of each API: OpenAI chat completions, Anthropic messages."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.responses import JSONResponse

from promptq.sim_provider.errors import SimError
from promptq.sim_provider.prompts import Prompt
from promptq.sim_provider.replies import Completion

# (type, code) as the real OpenAI API reports them.
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _error_headers(exc: SimError) -> dict[str, str] | None:
    if exc.retry_after is None:
        return None
    return {
        "retry-after": _format_seconds(exc.retry_after),
        "retry-after-ms": str(round(exc.retry_after * 1000)),
    }


def openai_error(exc: SimError) -> JSONResponse:
    default_type = "server_error" if exc.status >= 500 else "invalid_request_error"
    error_type, code = _OPENAI_ERRORS.get(exc.status, (default_type, None))
    if exc.kind is not None:
        error_type = exc.kind
    error = {"message": exc.message, "type": error_type, "param": exc.param, "code": code}
    return JSONResponse({"error": error}, status_code=exc.status, headers=_error_headers(exc))


def anthropic_error(exc: SimError) -> JSONResponse:
    default_type = "api_error" if exc.status >= 500 else "invalid_request_error"
    error = {"type": _ANTHROPIC_ERRORS.get(exc.status, default_type), "message": exc.message}
    return JSONResponse(
        {"type": "error", "error": error}, status_code=exc.status, headers=_error_headers(exc)
    )


def openai_body(prompt: Prompt, completion: Completion) -> dict[str, Any]:
    prompt_tokens = prompt.prompt_tokens
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": prompt.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if completion.finish == "length" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion.tokens,
            "total_tokens": prompt_tokens + completion.tokens,
        },
    }


def anthropic_body(prompt: Prompt, completion: Completion) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [{"type": "text", "text": completion.text}],
        "stop_reason": _ANTHROPIC_STOP[completion.finish],
        "stop_sequence": completion.stop_sequence,
        "usage": {"input_tokens": prompt.prompt_tokens, "output_tokens": completion.tokens},
    }
