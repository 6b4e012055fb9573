"""`sensorhub tail`: a user's notifications as they arrive, one JSON line each, like `redis-cli subscribe`.

Both ways in print the same line, `{"user", "keys", "last_id"}`. It subscribes again by itself after
a lost connection; what was published meanwhile is in the RabbitMQ queue, but not on the Redis
channel (Pub/Sub keeps nothing): the log is the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiormq
from redis.exceptions import RedisError

from sensorhub import notify, redis_client
from sensorhub.backoff import Backoff
from sensorhub.keys import Keys
from sensorhub.settings import Settings

log = logging.getLogger("sensorhub.tail")

Lines = AsyncIterator[str]
# What ends a subscription but not `tail`: it subscribes again after a backoff.
_LOST = (OSError, RedisError, aiormq.AMQPError, aiormq.ChannelInvalidStateError)


async def follow(settings: Settings, user: str, via: str, stop: asyncio.Event, write: Callable[[str], None]) -> None:
    """Write each notification of `user` until `stop` is set."""
    subscribe = _rabbitmq if via == "rabbitmq" else _redis
    backoff = Backoff(0.1, 5.0, stop)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            try:
                async with subscribe(settings, user) as lines:
                    backoff.reset()
                    while (line := await _unless_stopped(anext(lines), stopping)) is not None:
                        write(line)
            except BrokenPipeError:
                raise  # our reader went away (`| head`): that ends tail, it is no lost subscription
            except _LOST as exc:
                log.warning("%s subscription lost (%s); subscribing again in %.1fs", via, exc, backoff.delay)
                await backoff.wait()
    finally:
        stopping.cancel()


async def _unless_stopped(step: Awaitable[str], stopping: asyncio.Future[Any]) -> str | None:
    """The awaitable's value, or None if `stopping` finished first (the awaitable is then cancelled)."""
    task = asyncio.ensure_future(step)
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


@contextlib.asynccontextmanager
async def _rabbitmq(settings: Settings, user: str) -> AsyncIterator[Lines]:
    async with notify.subscribe(settings, user, f"sensorhub-tail:{user}") as subscription:

        async def lines() -> Lines:
            while True:
                body = await subscription.get()
                if body is not None:
                    yield body.decode()

        yield lines()


@contextlib.asynccontextmanager
async def _redis(settings: Settings, user: str) -> AsyncIterator[Lines]:
    redis = redis_client.connect(settings, f"sensorhub-tail:{user}")
    channel = Keys(settings.namespace).notify(user)
    try:
        async with redis_client.subscribed(redis, channel) as read:
            log.info("listening on %s", channel)

            async def lines() -> Lines:
                while True:
                    message = await read(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None:
                        # The Redis channel names no user (it is the user's own): add it, as in the queue's.
                        yield json.dumps({"user": user, **json.loads(message["data"])}, separators=(",", ":"))

            yield lines()
    finally:
        await redis.aclose()
