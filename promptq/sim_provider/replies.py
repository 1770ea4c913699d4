"""Deterministic reply text: words drawn from the prompt's hash, cut by max_tokens or a stop."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from promptq.sim_provider.prompts import Prompt

_VOCABULARY = (
    "amber basil cedar delta ember fjord grove harbor iris juniper kelp lagoon meadow nectar "
    "orchid pebble quartz river sage tundra umber valley willow xenon yarrow zephyr anchor "
    "beacon canyon dune estuary falcon glacier heron island jasper kestrel lantern mesa nova "
    "oasis prairie quill reef summit thistle upland vapor wren yonder zenith alder birch clover "
    "dahlia elm fern ginger hazel ivy jade lotus maple poppy"
)
_WORDS = tuple(_VOCABULARY.split())  # 64 words, so each digest byte picks one without bias

Finish = Literal["stop", "length", "stop_sequence"]


@dataclass(frozen=True)
class Completion:
    """The generated reply and why it ended."""

    text: str
    tokens: int
    finish: Finish
    stop_sequence: str | None


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


def generate(prompt: Prompt, wanted: int) -> Completion:
    """Generate the reply: `wanted` words unless max_tokens or a stop string cuts it short."""
    count = wanted if prompt.max_tokens is None else min(wanted, prompt.max_tokens)
    text = " ".join(_words(prompt.key, count))
    hit = _first_stop(text, prompt.stops)
    if hit is not None:
        index, stop = hit
        text = text[:index]
        return Completion(text, len(text.split()), "stop_sequence", stop)
    return Completion(text, count, "length" if count < wanted else "stop", None)
