"""The ``[[sim:name=value]]`` directives a prompt uses to make the provider misbehave."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from promptq.sim_provider.errors import SimError

_DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)=([^\]]*)\]\]")
_FAIL = re.compile(r"(\d{3})x(\d+)")
_DIRECTIVE_NAMES = frozenset({"fail", "status", "retry_after", "sleep", "tokens"})


@dataclass(frozen=True)
class Directives:
    """What the ``[[sim:...]]`` directives in one prompt ask for."""

    fail: tuple[int, int] | None = None  # (status, times)
    status: int | None = None
    retry_after: float | None = None
    sleep: float = 0.0
    tokens: int | None = None


_NO_DIRECTIVES = Directives()


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


def parse_directives(texts: Iterable[str]) -> Directives:
    """Read the ``[[sim:name=value]]`` directives of a prompt; malformed ones are a 400."""
    found: dict[str, str] = {}
    for text in texts:
        if "[[sim:" in text:  # most prompts have none; skip the regex for them
            found.update(_DIRECTIVE.findall(text))
    if not found:
        return _NO_DIRECTIVES
    unknown = sorted(found.keys() - _DIRECTIVE_NAMES)
    if unknown:
        raise SimError(400, f"Unknown sim directive(s): {', '.join(unknown)}.")
    try:
        return Directives(
            fail=_fail_spec(found["fail"]) if "fail" in found else None,
            status=_error_status(found["status"]) if "status" in found else None,
            retry_after=_seconds(found["retry_after"]) if "retry_after" in found else None,
            sleep=_seconds(found.get("sleep", "0")),
            tokens=_token_count(found["tokens"]) if "tokens" in found else None,
        )
    except ValueError as exc:
        raise SimError(400, f"Invalid sim directive: {exc}.") from None
