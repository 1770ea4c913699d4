"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request

from promptq import __version__
from promptq.api.deps import AppState
from promptq.api.docs import install_docs
from promptq.api.errors import ERROR_RESPONSES, install_error_handlers
from promptq.api.limits import BodySizeLimit
from promptq.api.routes import batches, files, jobs, meta, metrics, usage
from promptq.catalog import Catalog, load_catalog
from promptq.cluster_view import ClusterView
from promptq.config import Settings, get_settings
from promptq.db import Database
from promptq.errors import InvalidRequest
from promptq.scheduler.validation import Validation, Validator
from promptq.workers.celery_app import make_celery

__all__ = ["create_app"]


async def _no_nul_in_url(request: Request) -> None:
    # Ids and cursors are looked up in Postgres text columns, which cannot hold NUL.
    if any("\x00" in v for v in [*request.path_params.values(), *request.query_params.values()]):
        raise InvalidRequest("invalid_request", "The URL contains a NUL character (%00).")


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    """The API app; the models file is read now, so a bad one fails at start-up."""
    settings = settings or get_settings()
    catalog = catalog or load_catalog(settings.models_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.from_settings(settings)
        celery = make_celery(settings)
        state = AppState(
            settings=settings,
            catalog=catalog,
            db=db,
            celery=celery,
            redis=aioredis.Redis.from_url(
                settings.redis_url, socket_connect_timeout=2, socket_timeout=2
            ),
            validator=Validator(Validation.from_settings(settings, db, catalog, celery)),
        )
        app.state.promptq = state
        app.state.cluster_view = ClusterView(
            state.db, state.redis, catalog, settings.metrics_cache_seconds
        )
        yield
        await state.validator.close()
        await state.redis.aclose()
        await state.db.dispose()

    app = FastAPI(
        title="promptq",
        version=__version__,
        lifespan=lifespan,
        description="Queue-backed asynchronous jobs for LLM prompts.",
        # Served by install_docs from a package's assets: FastAPI's own load from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    for module in (jobs, files, batches, usage):
        app.include_router(
            module.router, responses=ERROR_RESPONSES, dependencies=[Depends(_no_nul_in_url)]
        )
    app.include_router(meta.router)
    app.include_router(metrics.router)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    return app
