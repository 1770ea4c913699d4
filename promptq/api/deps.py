"""Typed dependencies: the session, the caller's key, the catalog, the broker, and the
request's Idempotency-Key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.api.batch_counts import BatchCounts
from promptq.catalog import Catalog
from promptq.config import Settings
from promptq.db import Database
from promptq.errors import NotFound, Unauthorized
from promptq.idempotency import MAX_KEY_LENGTH, Handler, Idempotency, check_key
from promptq.keys import find_key
from promptq.models import ApiKey
from promptq.scheduler.validation import Validator

__all__ = [
    "AppState",
    "CatalogDep",
    "CurrentKey",
    "IdempotencyDep",
    "IdempotentRequest",
    "SessionDep",
    "StateDep",
    "owned",
]


@dataclass
class AppState:
    """What the API process holds for its lifetime."""

    settings: Settings
    catalog: Catalog
    db: Database
    celery: Celery
    redis: aioredis.Redis
    #: Validates new batches after `POST /v1/batches` answered.
    validator: Validator
    #: Running batches' counts, reused briefly when counting is slow.
    batch_counts: BatchCounts = field(default_factory=BatchCounts)


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.promptq
    return state


StateDep = Annotated[AppState, Depends(_state)]


async def _session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]


def _catalog(state: StateDep) -> Catalog:
    return state.catalog


CatalogDep = Annotated[Catalog, Depends(_catalog)]


async def _current_key(request: Request, session: SessionDep) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    key = await find_key(session, token.strip())
    if key is None:
        raise Unauthorized("Invalid API key.")
    return key


CurrentKey = Annotated[ApiKey, Depends(_current_key)]


@dataclass
class IdempotentRequest:
    """A POST that honours its Idempotency-Key (promptq.idempotency), as a response."""

    idempotency: Idempotency

    @property
    def key(self) -> str | None:
        """The request's Idempotency-Key, if it sent one."""
        return self.idempotency.key

    async def respond(self, payload: Any, handler: Handler, status_code: int = 200) -> JSONResponse:
        """Run `handler` once per key and answer with its (or the stored) response."""
        answer = await self.idempotency.run(payload, handler, status_code)
        return JSONResponse(answer.body, answer.status_code, headers=answer.headers)


async def _idempotency(
    request: Request,
    key: CurrentKey,
    session: SessionDep,
    state: StateDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Retrying with the same key returns the first response (24 h).",
            # Documented only: check_key refuses a bad key with its own error code.
            json_schema_extra={"maxLength": MAX_KEY_LENGTH, "pattern": "^[!-~]([ -~]*[!-~])?$"},
        ),
    ] = None,
) -> IdempotentRequest:
    return IdempotentRequest(
        Idempotency(
            db=state.db,
            session=session,
            tenant=key.tenant,
            method=request.method,
            path=request.url.path,
            key=None if idempotency_key is None else check_key(idempotency_key),
            ttl=timedelta(seconds=state.settings.idempotency_ttl_seconds),
        )
    )


IdempotencyDep = Annotated[IdempotentRequest, Depends(_idempotency)]


def owned(obj: Any, key: ApiKey, kind: str, object_id: str) -> Any:
    """The object if the caller's tenant owns it (or the caller is admin), else 404."""
    if obj is None or (not key.is_admin and obj.tenant != key.tenant):
        raise NotFound(kind, object_id)
    return obj
