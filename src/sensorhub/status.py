"""The collector's status app: /metrics for Prometheus and /healthz for orchestrators."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def metrics_endpoint(request: Request) -> Response:
    """This process's Prometheus metrics (the collector's status port and each dashboard serve it)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def status_app(health: Callable[[], dict[str, bool]]) -> Starlette:
    async def healthz(request: Request) -> Response:
        checks = health()
        healthy = all(checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **checks}, status_code=200 if healthy else 503
        )

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics_endpoint)])
