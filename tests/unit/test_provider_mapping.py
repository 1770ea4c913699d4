"""How the remote worker reads providers: HTTP errors become retryable or terminal job
errors (with the provider's status and message), and a chat request becomes an Anthropic
Messages request."""

from __future__ import annotations

import json

import pytest

from promptq.errors import RateLimited, RetryableError, TerminalError
from promptq.scheduler.rate_headers import read_rate_headers
from promptq.workers.remote_worker import _raise_for_status, _to_anthropic


def _error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "x"}}).encode()


def test_a_success_raises_nothing() -> None:
    _raise_for_status(200, b"{}", "OK", None)


def test_429_is_rate_limited_with_the_retry_after_in_seconds() -> None:
    with pytest.raises(RateLimited) as caught:
        signal = read_rate_headers({"retry-after": "3"})
        _raise_for_status(429, _error_body("slow down"), "Too Many Requests", signal)
    error = caught.value
    assert (error.code, error.message, error.provider_status) == ("rate_limited", "slow down", 429)
    assert error.retry_after == 3.0


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 529])
def test_timeouts_conflicts_and_server_errors_are_retried(status: int) -> None:
    with pytest.raises(RetryableError) as caught:
        _raise_for_status(status, _error_body("busy"), "", None)
    assert not isinstance(caught.value, RateLimited)
    assert (caught.value.code, caught.value.provider_status) == ("provider_unavailable", status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_terminal_and_keep_the_status(status: int) -> None:
    with pytest.raises(TerminalError) as caught:
        _raise_for_status(status, _error_body("bad request"), "", None)
    assert (caught.value.code, caught.value.provider_status) == ("provider_error", status)
    assert caught.value.message == "bad request"


def test_a_body_that_is_not_json_becomes_the_message_or_the_reason() -> None:
    with pytest.raises(TerminalError, match="gateway says no"):
        _raise_for_status(400, b"gateway says no", "Bad Request", None)
    with pytest.raises(TerminalError, match="Bad Request"):
        _raise_for_status(400, b"", "Bad Request", None)


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 16,
    }
    out = _to_anthropic(body, "claude-x")
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 16,
        "system": "Be brief.\n\nAnswer in French.",
    }


def test_sampling_parameters_and_stop_are_mapped_and_max_tokens_has_a_default() -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": "END",
        "seed": 7,  # Anthropic has no seed: dropped
    }
    out = _to_anthropic(body, "claude-x")
    assert out["max_tokens"] == 4096
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.2, 0.9, 40)
    assert out["stop_sequences"] == ["END"]
    assert "seed" not in out and "system" not in out


def test_max_completion_tokens_and_a_stop_list_are_accepted() -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 32,
        "stop": ["A", "B"],
    }
    out = _to_anthropic(body, "claude-x")
    assert (out["max_tokens"], out["stop_sequences"]) == (32, ["A", "B"])


def test_a_prompt_too_long_for_the_context_is_its_own_terminal_code() -> None:
    # Then context_window_fallbacks can tell it from other refusals
    body = json.dumps(
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "code": "context_length_exceeded",
            }
        }
    ).encode()
    with pytest.raises(TerminalError) as caught:
        _raise_for_status(400, body, "Bad Request")
    assert (caught.value.code, caught.value.provider_status) == ("context_length_exceeded", 400)
