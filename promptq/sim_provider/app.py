"""The Starlette app: the OpenAI and Anthropic routes, plus ``/_sim/`` stats, the calls log,
reset and config (limits and outage modes changed at run time)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from promptq.sim_provider.config import SIM_MODELS, SimConfig
from promptq.sim_provider.errors import SimError
from promptq.sim_provider.prompts import json_object, parse_anthropic, parse_openai
from promptq.sim_provider.responses import (
    anthropic_body,
    anthropic_error,
    openai_body,
    openai_error,
)
from promptq.sim_provider.simulator import Simulator


def _bearer_token(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def build_app(config: SimConfig) -> Starlette:
    """Build the ASGI app of a simulated provider; each app keeps its own counters."""
    sim = Simulator(config)

    async def chat_completions(request: Request) -> Response:
        try:
            if not sim.authorized(_bearer_token(request.headers.get("authorization"))):
                raise SimError(401, "Incorrect API key provided (simulated provider).")
            prompt = request.state.prompt = parse_openai(await json_object(request))
            completion = await sim.complete(prompt)
        except SimError as exc:
            return openai_error(exc)
        return JSONResponse(openai_body(prompt, completion))

    async def messages(request: Request) -> Response:
        try:
            if not sim.authorized(request.headers.get("x-api-key")):
                raise SimError(401, "invalid x-api-key (simulated provider)")
            prompt = request.state.prompt = parse_anthropic(await json_object(request))
            completion = await sim.complete(prompt)
        except SimError as exc:
            return anthropic_error(exc)
        return JSONResponse(anthropic_body(prompt, completion))

    async def models(request: Request) -> Response:
        if not sim.authorized(_bearer_token(request.headers.get("authorization"))):
            return openai_error(SimError(401, "Incorrect API key provided (simulated provider)."))
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "promptq"} for m in SIM_MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    routes = [
        sim.counted("/v1/chat/completions", "POST", chat_completions),
        sim.counted("/v1/messages", "POST", messages),
        sim.counted("/v1/models", "GET", models),
        *_admin_routes(sim),
    ]
    return Starlette(routes=routes)


def _admin_routes(sim: Simulator) -> list[Route]:
    """The /_sim/ routes; not counted, so polling the stats does not change them."""

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def calls(request: Request) -> Response:
        return JSONResponse({"calls": sim.calls()})

    async def configure(request: Request) -> Response:
        try:
            sim.configure(await json_object(request))
        except (SimError, TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(sim.stats())

    async def reset(request: Request) -> Response:
        sim.reset()
        return JSONResponse(sim.stats())

    return [
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/calls", calls, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/config", configure, methods=["POST"]),
    ]
