"""How a command runs: its coroutine on uvloop, stopped by a signal; and which failures mean a service is down."""

from __future__ import annotations

import asyncio
import signal
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from sensorhub.settings import Settings, describe

# The top-level package of a client library: the service it talks to, and the setting with its URL.
_CLIENTS = {
    "aiormq": ("RabbitMQ", "amqp_url"),
    "pamqp": ("RabbitMQ", "amqp_url"),
    "redis": ("Redis", "redis_url"),
    "httpx": ("the RabbitMQ management API", "rabbitmq_api_url"),  # only `sensorhub station` calls it
}


def run_async(main: Callable[[], Coroutine[Any, Any, int]], on_signal: Callable[[], None] | None = None) -> int:
    """Run on uvloop. SIGTERM/SIGINT call `on_signal` for a graceful stop; without one, they cancel
    `main`, so its `finally` blocks still clean up."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop = runner.get_loop()
        task = loop.create_task(main())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal or task.cancel)
        try:
            return runner.run(_await(task))
        except asyncio.CancelledError:
            return 130


async def _await(task: asyncio.Task[int]) -> int:
    return await task


def unreachable(exc: BaseException, settings: Settings) -> str | None:
    """What to tell the user when `exc` says RabbitMQ or Redis could not be reached (or refused us); else None."""
    service = _service(exc)
    if service is None:
        return None
    name, setting = service
    return f"{name} is not reachable at {describe(settings)[setting]} ({str(exc) or type(exc).__name__})"


def _service(exc: BaseException) -> tuple[str, str] | None:
    from aiormq import AMQPConnectionError
    from redis import exceptions as redis

    if isinstance(exc, AMQPConnectionError):
        return _CLIENTS["aiormq"]
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return _CLIENTS["redis"]
    if type(exc).__module__.partition(".")[0] == "httpx" and isinstance(exc, _httpx_transport_error()):
        return _CLIENTS["httpx"]
    if isinstance(exc, OSError):  # TimeoutError included
        # A socket error a client let through as it is: the library it came from names the service.
        for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
            service = _CLIENTS.get(str(frame.f_globals.get("__name__", "")).partition(".")[0])
            if service:
                return service
    return None


def _httpx_transport_error() -> type[Exception]:
    from httpx import TransportError

    return TransportError
