"""`python -m promptq` is the `promptq` command."""

from __future__ import annotations

from promptq.cli import app

if __name__ == "__main__":
    app()
