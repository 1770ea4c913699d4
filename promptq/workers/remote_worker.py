"""Provider adapters for the remote worker: OpenAI-compatible chat completions and
Anthropic Messages over one pooled aiohttp session per worker process."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import aiohttp

from promptq.catalog import Backend as BackendKind
from promptq.catalog import Deployment, ModelEntry
from promptq.errors import RateLimited, RetryableError, TerminalError
from promptq.jobs import JobErrorCode
from promptq.scheduler.rate_headers import RateSignal, read_rate_headers
from promptq.scrub import scrub_credentials
from promptq.workers.completion import Completion, JobRequest, chat_completion_body

__all__ = [
    "AnthropicBackend",
    "OpenAIBackend",
    "ProviderRateLimited",
    "RemoteBackend",
    "make_http_session",
    "make_remote_backend",
]

_ANTHROPIC_VERSION = "2023-06-01"
_ANTHROPIC_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
_DEFAULT_ANTHROPIC_MAX_TOKENS = 4096
_CONNECT_TIMEOUT = 10.0
# Idle pooled connections are closed after this long: before the server's own idle timeout
# (uvicorn's, so vLLM's OpenAI server's, is 5 s), so a request rarely meets a connection
# the server is closing.
_KEEPALIVE_SECONDS = 4.0
_JSON_HEADERS = {"Content-Type": "application/json"}
_SECRET_HEADERS = ("authorization", "x-api-key")


def make_http_session(max_connections: int, timeout: float) -> aiohttp.ClientSession:
    """One pooled session per worker process, shared by every adapter; make it on the loop
    that uses it. `timeout` bounds a whole request, from taking a connection to the body."""
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=0, keepalive_timeout=_KEEPALIVE_SECONDS
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=_CONNECT_TIMEOUT),
    )


class ProviderRateLimited(RateLimited):
    """A 429, with everything the answer said about the provider's limits."""

    def __init__(self, message: str, signal: RateSignal) -> None:
        super().__init__(message, signal.retry_after)
        self.signal = signal


# How providers say a prompt does not fit the model's context window.
_CONTEXT_CODES = ("context_length_exceeded", "string_above_max_length")
_CONTEXT_PHRASES = ("maximum context length", "prompt is too long", "context window")


def _error_code(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _error_message(body: bytes, reason: str) -> str:
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or reason
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return text[:500]


def _raise_for_status(
    status: int,
    body: bytes,
    reason: str,
    signal: RateSignal | None = None,
    known: Sequence[str] = (),
) -> None:
    if status < 400:
        return
    # Tenants see this text: a provider echoing a request header must not leak our key.
    message = scrub_credentials(_error_message(body, reason), known)
    if status == 429:
        raise ProviderRateLimited(message, signal or RateSignal())
    if status in (408, 409) or status >= 500:
        raise RetryableError("provider_unavailable", message, status)
    lowered = message.lower()
    if status in (400, 413) and (
        _error_code(body) in _CONTEXT_CODES or any(p in lowered for p in _CONTEXT_PHRASES)
    ):
        raise TerminalError(JobErrorCode.CONTEXT_LENGTH_EXCEEDED, message, status)
    raise TerminalError("provider_error", message, status)


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[dict[str, Any], RateSignal]:
    secrets = [
        v.removeprefix("Bearer ") for k, v in headers.items() if k.lower() in _SECRET_HEADERS
    ]
    try:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        async with session.post(url, data=data.encode(), headers=headers) as response:
            raw = await response.read()
            status, reason = response.status, response.reason or ""
            signal = read_rate_headers(response.headers)
    except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError too
        message = scrub_credentials(f"The provider did not answer in time: {exc!r}", secrets)
        raise RetryableError("provider_timeout", message) from exc
    except aiohttp.ClientError as exc:  # refused, reset, closed early, malformed answer
        message = scrub_credentials(f"Cannot reach the provider: {exc!r}", secrets)
        raise RetryableError("provider_unreachable", message) from exc
    _raise_for_status(status, raw, reason, signal, secrets)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RetryableError("provider_bad_response", "The provider's answer is not JSON.") from exc
    if not isinstance(data, dict):
        raise RetryableError("provider_bad_response", "The provider's answer is not an object.")
    return data, signal


@runtime_checkable
class RemoteBackend(Protocol):
    """A provider adapter: one attempt on a chosen deployment of its model."""

    async def complete_via(self, deployment: Deployment, request: JobRequest) -> Completion: ...

    async def complete(self, request: JobRequest) -> Completion: ...

    async def aclose(self) -> None: ...


def _first_deployment(entry: ModelEntry) -> Deployment:
    deployments = entry.all_deployments()
    if not deployments:
        raise ValueError(f"model {entry.name!r} has no deployment")
    return deployments[0]


class _HttpBackend:
    """What every provider adapter shares: its model, the worker's pooled HTTP session, and
    `complete` as one attempt on the model's first deployment."""

    def __init__(self, entry: ModelEntry, session: aiohttp.ClientSession) -> None:
        self._entry = entry
        self._session = session

    async def complete(self, request: JobRequest) -> Completion:
        """One attempt on the model's first deployment."""
        return await self.complete_via(_first_deployment(self._entry), request)

    async def complete_via(self, deployment: Deployment, request: JobRequest) -> Completion:
        raise NotImplementedError

    async def aclose(self) -> None:
        """The shared session is closed by its owner."""


class OpenAIBackend(_HttpBackend):
    """Chat completions on any OpenAI-compatible server (OpenAI, vLLM, relays)."""

    async def complete_via(self, deployment: Deployment, request: JobRequest) -> Completion:
        url = f"{deployment.base_url.rstrip('/')}/chat/completions"
        body = {**request.body, "model": request.upstream, "stream": False}
        headers = _JSON_HEADERS
        if key := deployment.api_key():
            headers = {**headers, "Authorization": f"Bearer {key}"}
        data, signal = await _post(self._session, url, body, headers)
        try:
            choice = data["choices"][0]
            usage = data["usage"]
            return Completion(
                content=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                request_id=data.get("id"),
                extra={"response": data, "rate_signal": signal},
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RetryableError("provider_bad_response", f"Unexpected answer: {exc!r}") from exc


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


class AnthropicBackend(_HttpBackend):
    """Anthropic Messages; answers are returned in the chat.completion shape."""

    async def complete_via(self, deployment: Deployment, request: JobRequest) -> Completion:
        url = f"{deployment.base_url.rstrip('/')}/v1/messages"
        headers = {**_JSON_HEADERS, "anthropic-version": _ANTHROPIC_VERSION}
        if key := deployment.api_key():
            headers["x-api-key"] = key
        data, signal = await _post(
            self._session, url, _to_anthropic(request.body, request.upstream), headers
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
        extra = {"response": response, "rate_signal": signal}
        return Completion(**{**completion.__dict__, "extra": extra})


def make_remote_backend(entry: ModelEntry, session: aiohttp.ClientSession) -> RemoteBackend:
    """The adapter for a remote model entry."""
    if entry.backend is BackendKind.OPENAI:
        return OpenAIBackend(entry, session)
    if entry.backend is BackendKind.ANTHROPIC:
        return AnthropicBackend(entry, session)
    raise ValueError(f"model {entry.name!r} is not served by the remote worker")
