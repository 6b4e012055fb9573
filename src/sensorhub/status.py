"""The collector's status app: /metrics for Prometheus and /healthz for orchestrators.

`metrics_route` is shared with the dashboard, so every process serves its metrics the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Health = Callable[[], dict[str, bool]]


def metrics_route() -> Route:
    """GET /metrics, answered by prometheus_client's ASGI app at that very path (a Mount redirects to /metrics/)."""
    # Route calls a plain function as `endpoint(request)`; wrapped in staticmethod, it is served as ASGI.
    return Route("/metrics", staticmethod(make_asgi_app()), methods=["GET"])


async def healthz(health: Health, request: Request) -> Response:
    checks = health()
    healthy = all(checks.values())
    return JSONResponse({"status": "ok" if healthy else "unavailable", **checks}, status_code=200 if healthy else 503)


def status_app(health: Health) -> Starlette:
    return Starlette(routes=[Route("/healthz", functools.partial(healthz, health)), metrics_route()])
