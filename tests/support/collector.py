"""A collector running inside the test's own event loop, for tests that watch its state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from sensorhub import redis_client
from sensorhub.keys import Keys
from sensorhub.pipeline.collector import Collector, Tuning
from sensorhub.pipeline.store import Store
from sensorhub.settings import Settings
from tests.support.waiting import wait_until

Fill = Callable[..., Awaitable[None]]
"""The `filled` fixture: `await fill(bodies, user="user1", expected=len(bodies))` publishes and waits until logged."""


@contextlib.asynccontextmanager
async def running_collector(settings: Settings, tuning: Tuning | None = None) -> AsyncIterator[Collector]:
    """A collector consuming in this process, stopped gracefully on exit."""
    client = redis_client.connect(settings, "sensorhub-collector")
    store = Store(client, Keys(settings.namespace), settings.ttl_seconds, publish="redis" in settings.notify)
    collector = Collector(settings, store, tuning or Tuning())
    task = asyncio.create_task(collector.run())
    try:
        await wait_until(lambda: collector.rabbitmq_connected, what="collector consuming")
        yield collector
    finally:
        collector.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()
