"""The feed woken by the user's RabbitMQ queue (`--notify-via rabbitmq`) instead of Redis Pub/Sub.

The same interface as `PubSubFactory`: each tick means "read the log after your cursor" (it carries
no entries), and a tick comes at least every SAFETY_POLL_SECONDS. When the broker closes the
connection the iterator raises (a ConnectionError), and the feed's retry loop subscribes again and
catches up from its cursor.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sensorhub import notify
from sensorhub.dashboard.feed import SAFETY_POLL_SECONDS
from sensorhub.settings import Settings


class QueueWakeups:
    """Async context manager yielding an async iterator of ticks from `<user>_notifications`."""

    def __init__(self, settings: Settings, user: str) -> None:
        self._settings = settings
        self._user = user

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncIterator[list[bytes]]]:
        async with notify.subscribe(self._settings, self._user, f"sensorhub-dashboard:{self._user}") as subscription:
            yield self._ticks(subscription)

    @staticmethod
    async def _ticks(subscription: notify.Subscription) -> AsyncIterator[list[bytes]]:
        while True:
            message = await subscription.get(SAFETY_POLL_SECONDS)
            # Coalesce a burst of notifications into one read of the log.
            while message is not None:
                message = await subscription.get(0)
            yield []
