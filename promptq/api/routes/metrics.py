"""Prometheus' view of the cluster: queue depths, jobs and batches by status."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.registry import CollectorRegistry

from promptq.api.deps import StateDep
from promptq.cluster_view import ClusterCollector, ClusterView
from promptq.errors import Unauthorized
from promptq.metrics import authorized, render

router = APIRouter(tags=["meta"])


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
        401: {"description": "PROMPTQ_METRICS_TOKEN is set and was not sent."},
    },
)
async def metrics(request: Request, state: StateDep) -> Response:
    """The cluster read from Postgres and Redis (cached a few seconds), and this process."""
    token = state.settings.metrics_token
    secret = token.get_secret_value() if token else None
    if not authorized(request.headers.get("authorization"), secret):
        raise Unauthorized("Send 'Authorization: Bearer <metrics token>'.")
    view: ClusterView = request.app.state.cluster_view
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(await view.snapshot()))
    return Response(render(registry), media_type=CONTENT_TYPE_LATEST)
