"""Request parsing: an OpenAI or Anthropic request body, validated and reduced to a `Prompt`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from promptq.sim_provider.errors import SimError


@dataclass(frozen=True)
class Prompt:
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


async def json_object(request: Request) -> dict[str, Any]:
    """Return the request body as a JSON object, or raise a 400."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise SimError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise SimError(400, "The request body must be a JSON object.")
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
    raise SimError(400, f"'{param}' must be a string or an array of content blocks.", param=param)


def _message_texts(messages: Any) -> tuple[list[Any], list[str]]:
    """Validate the messages array; return it and the text of every message."""
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "'messages' must be a non-empty array.", param="messages")
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise SimError(400, "Each message must be an object with a 'role'.", param="messages")
        texts.extend(_content_texts(message.get("content"), "messages.content"))
    return messages, texts


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    """Return an optional positive integer field, or raise a 400."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimError(400, f"'{name}' must be a positive integer.", param=name)
    return value


def _stop_strings(value: Any, name: str) -> tuple[str, ...]:
    """Return the stop strings of a request (one string or a list of them)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise SimError(400, f"'{name}' must be a string or an array of strings.", param=name)
    return tuple(item for item in items if item)


def _common_checks(body: Mapping[str, Any]) -> str:
    """Refuse what the simulator does not do, and return the requested model."""
    if body.get("stream"):
        raise SimError(400, "Streaming is not supported by the simulated provider.", param="stream")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise SimError(400, "'model' is required.", param="model")
    return model


def _prompt_key(payload: Any) -> bytes:
    """Hash the canonical JSON of a prompt, so equal prompts share text and fault counts."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def parse_openai(body: Mapping[str, Any]) -> Prompt:
    """Validate an OpenAI chat completions request."""
    model = _common_checks(body)
    messages, texts = _message_texts(body.get("messages"))
    max_tokens = _positive_int(body, "max_completion_tokens")
    legacy_max_tokens = _positive_int(body, "max_tokens")
    return Prompt(
        model=model,
        key=_prompt_key(messages),
        texts=tuple(texts),
        message_count=len(messages),
        max_tokens=max_tokens if max_tokens is not None else legacy_max_tokens,
        stops=_stop_strings(body.get("stop"), "stop"),
    )


def parse_anthropic(body: Mapping[str, Any]) -> Prompt:
    """Validate an Anthropic messages request; ``max_tokens`` is required there."""
    model = _common_checks(body)
    messages, texts = _message_texts(body.get("messages"))
    max_tokens = _positive_int(body, "max_tokens")
    if max_tokens is None:
        raise SimError(400, "max_tokens: Field required", param="max_tokens")
    system = body.get("system")
    # Without a system prompt the key equals the OpenAI one, so both APIs answer alike.
    key_payload = messages if system is None else {"system": system, "messages": messages}
    return Prompt(
        model=model,
        key=_prompt_key(key_payload),
        texts=(*_content_texts(system, "system"), *texts),
        message_count=len(messages),
        max_tokens=max_tokens,
        stops=_stop_strings(body.get("stop_sequences"), "stop_sequences"),
    )
