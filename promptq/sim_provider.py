"""The project's simulated LLM provider: OpenAI chat completions and Anthropic messages over HTTP.

Replies are a pure function of the prompt, and directives in the prompt text
(``[[sim:fail=429x2]]``, ``[[sim:status=400]]``, ``[[sim:sleep=2.5]]``, ``[[sim:tokens=N]]``,
``[[sim:retry_after=0.2]]``) make it misbehave on purpose, so tests meet real provider failures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["SIM_MODELS", "SimConfig", "build_app", "main", "serve"]

SIM_MODELS = ("promptq-sim",)  # what GET /v1/models lists; requests may name any model

_VOCABULARY = (
    "amber basil cedar delta ember fjord grove harbor iris juniper kelp lagoon meadow nectar "
    "orchid pebble quartz river sage tundra umber valley willow xenon yarrow zephyr anchor "
    "beacon canyon dune estuary falcon glacier heron island jasper kestrel lantern mesa nova "
    "oasis prairie quill reef summit thistle upland vapor wren yonder zenith alder birch clover "
    "dahlia elm fern ginger hazel ivy jade lotus maple poppy"
)
_WORDS = tuple(_VOCABULARY.split())  # 64 words, so each digest byte picks one without bias
_DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)=([^\]]*)\]\]")
_FAIL = re.compile(r"(\d{3})x(\d+)")
_DIRECTIVE_NAMES = frozenset({"fail", "status", "retry_after", "sleep", "tokens"})

# Stable reasons after "simulated provider error <status>: ", so tests can match messages.
_REASONS: dict[int, str] = {
    400: "Invalid request: simulated bad request",
    401: "Authentication failed: simulated invalid API key",
    403: "Permission denied: simulated forbidden request",
    404: "Not found: simulated missing model",
    422: "Unprocessable entity: simulated validation failure",
    429: "Rate limit exceeded: simulated rate limit",
    500: "Internal server error: simulated server failure",
    502: "Bad gateway: simulated upstream failure",
    503: "Service unavailable: simulated overload",
    529: "Overloaded: simulated overload",
}
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

Finish = Literal["stop", "length", "stop_sequence"]
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class SimConfig:
    """How the simulated provider behaves for every request; prompt directives override it."""

    latency_ms: float = 0.0
    output_tokens: int = 16
    fail_429_rate: float = 0.0
    fail_500_rate: float = 0.0
    retry_after: float = 1.0
    api_key: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.retry_after < 0 or self.output_tokens < 0:
            raise ValueError("latency_ms, retry_after and output_tokens must not be negative")
        rates = (self.fail_429_rate, self.fail_500_rate)
        if not all(0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0:
            raise ValueError("failure rates must lie in [0, 1] and add up to at most 1")


class _SimError(Exception):
    """An error response, rendered in the shape of whichever API the request used."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Directives:
    """What the ``[[sim:...]]`` directives in one prompt ask for."""

    fail: tuple[int, int] | None = None  # (status, times)
    status: int | None = None
    retry_after: float | None = None
    sleep: float = 0.0
    tokens: int | None = None


_NO_DIRECTIVES = _Directives()


@dataclass(frozen=True)
class _Prompt:
    """A validated request, reduced to what the simulator needs from either API."""

    model: str
    key: bytes  # sha256 of the canonical messages: seeds the text, keys the fault counts
    texts: tuple[str, ...]
    message_count: int
    max_tokens: int | None
    stops: tuple[str, ...]

    @property
    def prompt_tokens(self) -> int:
        words = sum(len(text.split()) for text in self.texts)
        return max(1, words + self.message_count)


@dataclass(frozen=True)
class _Completion:
    """The generated reply and why it ended."""

    text: str
    tokens: int
    finish: Finish
    stop_sequence: str | None


# --- request parsing -------------------------------------------------------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    """Return the request body as a JSON object, or raise a 400."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise _SimError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _SimError(400, "The request body must be a JSON object.")
    return body


def _content_texts(content: Any, param: str) -> list[str]:
    """Return the text parts of a message content (a string or a list of content blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        ]
    raise _SimError(400, f"'{param}' must be a string or an array of content blocks.", param=param)


def _message_texts(messages: Any) -> tuple[list[Any], list[str]]:
    """Validate the messages array; return it and the text of every message."""
    if not isinstance(messages, list) or not messages:
        raise _SimError(400, "'messages' must be a non-empty array.", param="messages")
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _SimError(400, "Each message must be an object with a 'role'.", param="messages")
        texts.extend(_content_texts(message.get("content"), "messages.content"))
    return messages, texts


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    """Return an optional positive integer field, or raise a 400."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _SimError(400, f"'{name}' must be a positive integer.", param=name)
    return value


def _stop_strings(value: Any, name: str) -> tuple[str, ...]:
    """Return the stop strings of a request (one string or a list of them)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise _SimError(400, f"'{name}' must be a string or an array of strings.", param=name)
    return tuple(item for item in items if item)


def _common_checks(body: Mapping[str, Any]) -> str:
    """Refuse what the simulator does not do, and return the requested model."""
    if body.get("stream"):
        raise _SimError(
            400, "Streaming is not supported by the simulated provider.", param="stream"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _SimError(400, "'model' is required.", param="model")
    return model


def _prompt_key(payload: Any) -> bytes:
    """Hash the canonical JSON of a prompt, so equal prompts share text and fault counts."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def _parse_openai(body: Mapping[str, Any]) -> _Prompt:
    """Validate an OpenAI chat completions request."""
    model = _common_checks(body)
    messages, texts = _message_texts(body.get("messages"))
    max_tokens = _positive_int(body, "max_completion_tokens")
    legacy_max_tokens = _positive_int(body, "max_tokens")
    return _Prompt(
        model=model,
        key=_prompt_key(messages),
        texts=tuple(texts),
        message_count=len(messages),
        max_tokens=max_tokens if max_tokens is not None else legacy_max_tokens,
        stops=_stop_strings(body.get("stop"), "stop"),
    )


def _parse_anthropic(body: Mapping[str, Any]) -> _Prompt:
    """Validate an Anthropic messages request; ``max_tokens`` is required there."""
    model = _common_checks(body)
    messages, texts = _message_texts(body.get("messages"))
    max_tokens = _positive_int(body, "max_tokens")
    if max_tokens is None:
        raise _SimError(400, "max_tokens: Field required", param="max_tokens")
    system = body.get("system")
    # Without a system prompt the key equals the OpenAI one, so both APIs answer alike.
    key_payload = messages if system is None else {"system": system, "messages": messages}
    return _Prompt(
        model=model,
        key=_prompt_key(key_payload),
        texts=(*_content_texts(system, "system"), *texts),
        message_count=len(messages),
        max_tokens=max_tokens,
        stops=_stop_strings(body.get("stop_sequences"), "stop_sequences"),
    )


# --- directives ------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a number of seconds")
    return value


def _error_status(text: str) -> int:
    value = int(text)
    if not 400 <= value <= 599:
        raise ValueError(f"{text!r} is not an HTTP error status")
    return value


def _fail_spec(text: str) -> tuple[int, int]:
    match = _FAIL.fullmatch(text)
    if match is None:
        raise ValueError(f"fail={text!r} is not <status>x<times>, e.g. 429x2")
    return _error_status(match[1]), int(match[2])


def _token_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"tokens={text!r} is negative")
    return value


def _parse_directives(texts: Iterable[str]) -> _Directives:
    """Read the ``[[sim:name=value]]`` directives of a prompt; malformed ones are a 400."""
    found: dict[str, str] = {}
    for text in texts:
        if "[[sim:" in text:  # most prompts have none; skip the regex for them
            found.update(_DIRECTIVE.findall(text))
    if not found:
        return _NO_DIRECTIVES
    unknown = sorted(found.keys() - _DIRECTIVE_NAMES)
    if unknown:
        raise _SimError(400, f"Unknown sim directive(s): {', '.join(unknown)}.")
    try:
        return _Directives(
            fail=_fail_spec(found["fail"]) if "fail" in found else None,
            status=_error_status(found["status"]) if "status" in found else None,
            retry_after=_seconds(found["retry_after"]) if "retry_after" in found else None,
            sleep=_seconds(found.get("sleep", "0")),
            tokens=_token_count(found["tokens"]) if "tokens" in found else None,
        )
    except ValueError as exc:
        raise _SimError(400, f"Invalid sim directive: {exc}.") from None


def _simulated_error(status: int, retry_after: float, detail: str = "") -> _SimError:
    """Build the error a directive or a random failure asks for."""
    reason = _REASONS.get(status, f"Error: simulated status {status}")
    return _SimError(
        status,
        f"simulated provider error {status}: {reason}{detail}",
        retry_after=retry_after if status == 429 else None,
    )


# --- generation ------------------------------------------------------------------------------


def _words(key: bytes, count: int) -> list[str]:
    """Return `count` words drawn from sha256(key, block), one word per digest byte."""
    words: list[str] = []
    block = 0
    while len(words) < count:
        digest = hashlib.sha256(key + block.to_bytes(4, "big")).digest()
        words.extend(_WORDS[byte % len(_WORDS)] for byte in digest)
        block += 1
    return words[:count]


def _first_stop(text: str, stops: Iterable[str]) -> tuple[int, str] | None:
    hits = [(index, stop) for stop in stops if (index := text.find(stop)) >= 0]
    return min(hits) if hits else None


def _generate(prompt: _Prompt, wanted: int) -> _Completion:
    """Generate the reply: `wanted` words unless max_tokens or a stop string cuts it short."""
    count = wanted if prompt.max_tokens is None else min(wanted, prompt.max_tokens)
    text = " ".join(_words(prompt.key, count))
    hit = _first_stop(text, prompt.stops)
    if hit is not None:
        index, stop = hit
        text = text[:index]
        return _Completion(text, len(text.split()), "stop_sequence", stop)
    return _Completion(text, count, "length" if count < wanted else "stop", None)


# --- the simulator ---------------------------------------------------------------------------


class _Simulator:
    """The provider's state: the config, the random source, per-prompt fault counts, stats."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        # Re-seeding makes the random failures after a reset repeat those of a fresh server.
        self._rng = random.Random(self.config.seed)
        self._attempts: dict[bytes, int] = {}
        self._total = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "total": self._total,
            "by_endpoint": dict(self._by_endpoint),
            "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
        }

    def counted(self, path: str, method: str, handler: Handler) -> Route:
        """Route `path` to `handler`, counting each request and its response status."""

        async def endpoint(request: Request) -> Response:
            response = await handler(request)
            self._total += 1
            self._by_endpoint[path] += 1
            self._by_status[response.status_code] += 1
            return response

        return Route(path, endpoint, methods=[method])

    def authorized(self, supplied: str | None) -> bool:
        expected = self.config.api_key
        if expected is None:
            return True
        return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())

    async def complete(self, prompt: _Prompt) -> _Completion:
        """Apply the directives, faults and latency to a prompt, then generate its reply."""
        directives = _parse_directives(prompt.texts)
        error = self._fault(prompt.key, directives)
        delay = self.config.latency_ms / 1000 + directives.sleep
        if delay > 0:  # no sleep at all at zero latency: the benchmark path stays cheap
            await asyncio.sleep(delay)
        if error is not None:
            raise error
        wanted = self.config.output_tokens if directives.tokens is None else directives.tokens
        return _generate(prompt, wanted)

    def _fault(self, key: bytes, directives: _Directives) -> _SimError | None:
        retry_after = directives.retry_after
        if retry_after is None:
            retry_after = self.config.retry_after
        if directives.status is not None:
            return _simulated_error(directives.status, retry_after)
        if directives.fail is None:
            return self._random_fault(retry_after)
        # A scripted prompt skips the random failures, so a test stays exact on a noisy server.
        status, times = directives.fail
        seen = self._attempts.get(key, 0)
        self._attempts[key] = seen + 1
        if seen < times:
            return _simulated_error(status, retry_after, f" (attempt {seen + 1} of {times})")
        return None

    def _random_fault(self, retry_after: float) -> _SimError | None:
        rate_429, rate_500 = self.config.fail_429_rate, self.config.fail_500_rate
        if rate_429 == 0 and rate_500 == 0:
            return None
        draw = self._rng.random()
        if draw < rate_429:
            return _simulated_error(429, retry_after)
        if draw < rate_429 + rate_500:
            return _simulated_error(500, retry_after)
        return None


# --- responses -------------------------------------------------------------------------------


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _error_headers(exc: _SimError) -> dict[str, str] | None:
    if exc.retry_after is None:
        return None
    return {
        "retry-after": _format_seconds(exc.retry_after),
        "retry-after-ms": str(round(exc.retry_after * 1000)),
    }


def _openai_error(exc: _SimError) -> JSONResponse:
    default_type = "server_error" if exc.status >= 500 else "invalid_request_error"
    error_type, code = _OPENAI_ERRORS.get(exc.status, (default_type, None))
    error = {"message": exc.message, "type": error_type, "param": exc.param, "code": code}
    return JSONResponse({"error": error}, status_code=exc.status, headers=_error_headers(exc))


def _anthropic_error(exc: _SimError) -> JSONResponse:
    default_type = "api_error" if exc.status >= 500 else "invalid_request_error"
    error = {"type": _ANTHROPIC_ERRORS.get(exc.status, default_type), "message": exc.message}
    return JSONResponse(
        {"type": "error", "error": error}, status_code=exc.status, headers=_error_headers(exc)
    )


def _openai_body(prompt: _Prompt, completion: _Completion) -> dict[str, Any]:
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


def _anthropic_body(prompt: _Prompt, completion: _Completion) -> dict[str, Any]:
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


def _bearer_token(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


# --- the app ---------------------------------------------------------------------------------


def build_app(config: SimConfig) -> Starlette:
    """Build the ASGI app of a simulated provider; each app keeps its own counters."""
    sim = _Simulator(config)

    async def chat_completions(request: Request) -> Response:
        try:
            if not sim.authorized(_bearer_token(request.headers.get("authorization"))):
                raise _SimError(401, "Incorrect API key provided (simulated provider).")
            prompt = _parse_openai(await _json_object(request))
            completion = await sim.complete(prompt)
        except _SimError as exc:
            return _openai_error(exc)
        return JSONResponse(_openai_body(prompt, completion))

    async def messages(request: Request) -> Response:
        try:
            if not sim.authorized(request.headers.get("x-api-key")):
                raise _SimError(401, "invalid x-api-key (simulated provider)")
            prompt = _parse_anthropic(await _json_object(request))
            completion = await sim.complete(prompt)
        except _SimError as exc:
            return _anthropic_error(exc)
        return JSONResponse(_anthropic_body(prompt, completion))

    async def models(request: Request) -> Response:
        if not sim.authorized(_bearer_token(request.headers.get("authorization"))):
            return _openai_error(_SimError(401, "Incorrect API key provided (simulated provider)."))
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "promptq"} for m in SIM_MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def reset(request: Request) -> Response:
        sim.reset()
        return JSONResponse(sim.stats())

    routes = [
        sim.counted("/v1/chat/completions", "POST", chat_completions),
        sim.counted("/v1/messages", "POST", messages),
        sim.counted("/v1/models", "GET", models),
        # The /_sim/ routes are not counted, so polling the stats does not change them.
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulated provider on host:port until interrupted (blocking)."""
    # No access log: at zero latency the benchmark would spend its time logging.
    uvicorn.run(build_app(config), host=host, port=port, access_log=False, log_level="info")


def _argument_parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m promptq.sim_provider", description="Run promptq's simulated LLM provider."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--fail-429-rate", type=float, default=defaults.fail_429_rate)
    parser.add_argument("--fail-500-rate", type=float, default=defaults.fail_500_rate)
    parser.add_argument("--retry-after", type=float, default=defaults.retry_after)
    parser.add_argument("--api-key", default=defaults.api_key)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = _argument_parser()
    args = parser.parse_args(argv)
    try:
        config = SimConfig(
            latency_ms=args.latency_ms,
            output_tokens=args.output_tokens,
            fail_429_rate=args.fail_429_rate,
            fail_500_rate=args.fail_500_rate,
            retry_after=args.retry_after,
            api_key=args.api_key,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    serve(args.host, args.port, config)


if __name__ == "__main__":
    main()
