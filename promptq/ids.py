"""Object ids, prefixed by kind the way OpenAI's are (file-…, batch_…)."""

from __future__ import annotations

import secrets

__all__ = ["new_id"]


def new_id(prefix: str) -> str:
    """A random id such as `batch_6f1c…` (24 hex digits after the prefix)."""
    return f"{prefix}{secrets.token_hex(12)}"
