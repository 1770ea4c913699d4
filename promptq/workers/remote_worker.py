"""Provider adapters for the remote worker: OpenAI-compatible chat completions and
Anthropic Messages over one pooled async HTTP client."""

from __future__ import annotations

from typing import Any

import httpx

from promptq.catalog import Backend as BackendKind
from promptq.catalog import ModelEntry
from promptq.errors import RateLimited, RetryableError, TerminalError
from promptq.formats import chat_completion_body
from promptq.retry import parse_retry_after
from promptq.workers.completion import Backend, Completion, JobRequest

__all__ = ["AnthropicBackend", "OpenAIBackend", "make_http_client", "make_remote_backend"]

_ANTHROPIC_VERSION = "2023-06-01"
_ANTHROPIC_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
_DEFAULT_ANTHROPIC_MAX_TOKENS = 4096


def make_http_client(max_connections: int, timeout: float) -> httpx.AsyncClient:
    """One pooled client per worker process, shared by every adapter."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout, connect=10.0))


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return response.text[:500]


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    message = _error_message(response)
    if status == 429:
        raise RateLimited(message, parse_retry_after(response.headers.get("retry-after")))
    if status in (408, 409) or status >= 500:
        raise RetryableError("provider_unavailable", message, status)
    raise TerminalError("provider_error", message, status)


async def _post(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    try:
        response = await client.post(url, json=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise RetryableError(
            "provider_timeout", f"The provider did not answer in time: {exc!r}"
        ) from exc
    except httpx.TransportError as exc:
        raise RetryableError("provider_unreachable", f"Cannot reach the provider: {exc!r}") from exc
    _raise_for_status(response)
    try:
        data = response.json()
    except ValueError as exc:
        raise RetryableError("provider_bad_response", "The provider's answer is not JSON.") from exc
    if not isinstance(data, dict):
        raise RetryableError("provider_bad_response", "The provider's answer is not an object.")
    return data


class OpenAIBackend:
    """Chat completions on any OpenAI-compatible server (OpenAI, vLLM, relays)."""

    def __init__(self, entry: ModelEntry, client: httpx.AsyncClient) -> None:
        self._url = f"{(entry.base_url or '').rstrip('/')}/chat/completions"
        self._entry = entry
        self._client = client

    async def complete(self, request: JobRequest) -> Completion:
        body = {**request.body, "model": request.upstream, "stream": False}
        headers = {}
        if key := self._entry.api_key():
            headers["Authorization"] = f"Bearer {key}"
        data = await _post(self._client, self._url, body, headers)
        try:
            choice = data["choices"][0]
            usage = data["usage"]
            return Completion(
                content=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                request_id=data.get("id"),
                extra={"response": data},
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RetryableError("provider_bad_response", f"Unexpected answer: {exc!r}") from exc

    async def aclose(self) -> None:
        """The shared client is closed by its owner."""


def _to_anthropic(body: dict[str, Any], upstream: str) -> dict[str, Any]:
    system = [m["content"] for m in body["messages"] if m.get("role") in ("system", "developer")]
    messages = [m for m in body["messages"] if m.get("role") not in ("system", "developer")]
    out: dict[str, Any] = {
        "model": upstream,
        "messages": messages,
        "max_tokens": body.get("max_tokens")
        or body.get("max_completion_tokens")
        or _DEFAULT_ANTHROPIC_MAX_TOKENS,
    }
    if system:
        out["system"] = "\n\n".join(str(s) for s in system)
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return out


class AnthropicBackend:
    """Anthropic Messages; answers are returned in the chat.completion shape."""

    def __init__(self, entry: ModelEntry, client: httpx.AsyncClient) -> None:
        self._url = f"{(entry.base_url or '').rstrip('/')}/v1/messages"
        self._entry = entry
        self._client = client

    async def complete(self, request: JobRequest) -> Completion:
        headers = {"anthropic-version": _ANTHROPIC_VERSION}
        if key := self._entry.api_key():
            headers["x-api-key"] = key
        data = await _post(
            self._client, self._url, _to_anthropic(request.body, request.upstream), headers
        )
        try:
            text = "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")
            usage = data["usage"]
            completion = Completion(
                content=text,
                finish_reason=_ANTHROPIC_STOP.get(data.get("stop_reason") or "", "stop"),
                prompt_tokens=int(usage["input_tokens"]),
                completion_tokens=int(usage["output_tokens"]),
                request_id=data.get("id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RetryableError("provider_bad_response", f"Unexpected answer: {exc!r}") from exc
        response = chat_completion_body(request.job_id, request.model, completion)
        return Completion(**{**completion.__dict__, "extra": {"response": response}})

    async def aclose(self) -> None:
        """The shared client is closed by its owner."""


def make_remote_backend(entry: ModelEntry, client: httpx.AsyncClient) -> Backend:
    """The adapter for a remote model entry."""
    if entry.backend is BackendKind.OPENAI:
        return OpenAIBackend(entry, client)
    if entry.backend is BackendKind.ANTHROPIC:
        return AnthropicBackend(entry, client)
    raise ValueError(f"model {entry.name!r} is not served by the remote worker")
