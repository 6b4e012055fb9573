"""uvicorn inside our own processes: without its own signal handling, and on a port that may be taken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn
from starlette.applications import Starlette

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


def end_streams(app: Starlette) -> None:
    """End the app's open event streams before the server shuts down: uvicorn would otherwise wait
    for them (up to its graceful timeout) and then cut them. The app's lifespan sets the hook."""
    end: Callable[[], None] | None = getattr(app.state, "end_streams", None)
    if end is not None:
        end()


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
