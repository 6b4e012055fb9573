"""HTTP serving inside our own processes: uvicorn without its signal handling, and the collector's status app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("sensorhub.status")


class _QuietStreamCut(logging.Filter):
    """Ending open SSE streams at shutdown is expected, not an error worth a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ASGI callable returned without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_QuietStreamCut())


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a process that handles its own signals: it must not take SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def metrics_endpoint(request: Request) -> Response:
    """This process's Prometheus metrics (the collector's status port and each dashboard serve it)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def status_app(health: Callable[[], dict[str, bool]]) -> Starlette:
    """The collector's /metrics for Prometheus and /healthz for orchestrators."""

    async def healthz(request: Request) -> Response:
        checks = health()
        healthy = all(checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **checks}, status_code=200 if healthy else 503
        )

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics_endpoint)])


@contextlib.asynccontextmanager
async def serving(app: Starlette, host: str, port: int) -> AsyncIterator[bool]:
    """Serve `app` while the block runs; yields False (with a warning) if the port is taken.

    A collector keeps consuming without its status port: moving readings matters more, and it lets
    several collectors share one machine without port juggling.
    """
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        log.warning("status port %s:%d unavailable (%s): no /metrics or /healthz here", host, port, exc.strerror)
        yield False
        return
    server = EmbeddedServer(uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("status on http://%s:%d/metrics and /healthz", host, port)
    try:
        yield True
    finally:
        server.should_exit = True
        await asyncio.wait({task}, timeout=2)
        sock.close()
