"""`promptq keys list | revoke | rotate-webhook-secret`: API key administration against
the database (registered on `promptq keys` by promptq.cli)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from promptq.config import get_settings

if TYPE_CHECKING:  # the commands import what they use when they run: a quick CLI start
    from sqlalchemy.ext.asyncio import AsyncSession

    from promptq.models import ApiKey

__all__ = ["register_key_commands"]

T = TypeVar("T")


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from promptq.db import Database
    from promptq.keys import KeyAdminError

    async def _go() -> T:
        db = Database.from_settings(get_settings(), pool_size=1)
        try:
            async with db.session() as session:
                return await work(session)
        finally:
            await db.dispose()

    try:
        return asyncio.run(_go())
    except KeyAdminError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _describe(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "tenant": key.tenant,
        "prefix": key.key_prefix,
        "admin": key.is_admin,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "own_webhook_secret": key.webhook_secret is not None,
    }


def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List API keys (never their tokens or secrets), revoked ones included."""
    from promptq.keys import list_keys

    for key in _run(lambda session: list_keys(session, tenant)):
        row = _describe(key)
        if as_json:
            typer.echo(json.dumps(row))
        else:
            state = "revoked" if key.revoked_at else "live"
            admin = " admin" if key.is_admin else ""
            typer.echo(f"{key.id}  {key.key_prefix}...  {key.tenant}/{key.name}  {state}{admin}")


def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or prefix.")]) -> None:
    """Revoke an API key: its token stops working at once."""
    from promptq.keys import revoke_key

    revoked = _run(lambda session: revoke_key(session, key))
    typer.echo(f"revoked {revoked.id} ({revoked.tenant}/{revoked.name})")


def keys_rotate_webhook_secret(
    key: Annotated[str, typer.Argument(help="The key's id or prefix.")],
    grace_hours: Annotated[
        float, typer.Option(min=0, help="How long the old secret keeps signing too.")
    ] = 24.0,
) -> None:
    """Give a key a new webhook signing secret and print it (shown only once); deliveries
    carry the old and the new signature until the grace period ends."""
    from promptq.keys import rotate_webhook_secret

    secret, _ = _run(
        lambda session: rotate_webhook_secret(session, key, timedelta(hours=grace_hours))
    )
    typer.echo(secret)


def register_key_commands(keys_app: typer.Typer) -> None:
    """Add these commands to the `promptq keys` group."""
    keys_app.command("list")(keys_list)
    keys_app.command("revoke")(keys_revoke)
    keys_app.command("rotate-webhook-secret")(keys_rotate_webhook_secret)
