"""Models, liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from promptq.api.deps import CatalogDep, StateDep
from promptq.api.schemas import ModelList, ModelOut

router = APIRouter(tags=["meta"])


@router.get("/v1/models", operation_id="list_models")
async def list_models(catalog: CatalogDep) -> ModelList:
    """Every model clients may name, with its backend and prices (USD per 1M tokens)."""
    return ModelList(
        data=[
            ModelOut(
                id=e.name,
                backend=e.backend.value,
                input_per_mtok=float(e.input_per_mtok),
                output_per_mtok=float(e.output_per_mtok),
                rpm=e.rpm,
                tpm=e.tpm,
            )
            for e in catalog.values()
        ]
    )


@router.get("/healthz", operation_id="healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def _check(coro: object) -> str:
    try:
        await asyncio.wait_for(coro, 2.0)  # type: ignore[arg-type]
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@router.get(
    "/readyz",
    operation_id="readyz",
    responses={503: {"description": "The database or Redis is unreachable."}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """The database and Redis answer; 503 otherwise."""
    database = await _check(state.db.ping())
    redis = await _check(state.redis.ping())
    ready = database == "ok" and redis == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "database": database, "redis": redis},
        status_code=200 if ready else 503,
    )
