"""Credential scrubbing: provider error text reaches tenants (job errors, error files,
webhooks), and a provider that echoes a request header must not leak promptq's key."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "scrub_credentials"]

REDACTED = "[redacted]"

_PATTERNS = [
    # Authorization-style headers and their values, quoted or not, to the end of the token.
    re.compile(
        r"(?i)\b(authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key|cookie)"
        r"(\"?\s*[:=]\s*\"?)(?:(?:bearer|basic|token)\s+)?[^\s\"',;}]+"
    ),
    # key=value or "key": "value" pairs whose name says secret.
    re.compile(
        r"(?i)\b([\w-]*(?:api[_-]?key|secret|token|password|passwd|credential)[\w-]*)"
        r"(\"?\s*[:=]\s*\"?)[^\s\"',;&}]+"
    ),
    # Bare bearer tokens.
    re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}"),
]
_TOKENS = re.compile(
    r"\b(?:"
    r"sk-[A-Za-z0-9_-]{12,}"  # OpenAI, Anthropic (sk-ant-...), and many compatible APIs
    r"|pq-[A-Za-z0-9_-]{20,}"  # promptq's own API keys
    r"|whsec_[A-Za-z0-9+/=]{20,}"  # webhook secrets
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"  # AWS access key ids
    r"|AIza[A-Za-z0-9_-]{30,}"  # Google API keys
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r")"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def scrub_credentials(text: str, known: Iterable[str | None] = ()) -> str:
    """`text` with anything that looks like a credential, and every `known` secret,
    replaced by `[redacted]`."""
    for secret in known:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _TOKENS.sub(REDACTED, text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
