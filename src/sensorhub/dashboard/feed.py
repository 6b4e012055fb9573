"""The live feed: one per dashboard process, shared by all its SSE clients.

Pub/Sub is at-most-once, so a notification is only a hint to read the log after our cursor. On
start-up and after every reconnect the feed reads the log anyway, so a notification missed while
disconnected costs nothing. Each event is encoded once, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from sensorhub.dashboard.userlog import ReadingWithId, UserLog
from sensorhub.redis_client import AnyRedis

log = logging.getLogger("sensorhub.dashboard")

_encode = msgspec.json.Encoder().encode
SAFETY_POLL_SECONDS = 5.0  # read the log even without a notification, in case the channel went quiet
PAGE_SIZE = 1000
CLIENT_QUEUE_LIMIT = 1000  # batches; a client this far behind is dropped and resumes via Last-Event-ID


@dataclass(frozen=True)
class Event:
    order: tuple[int, int]
    log_id: str
    sse: bytes


def sse_event(reading: ReadingWithId) -> bytes:
    return b"id: %s\nevent: reading\ndata: %s\n\n" % (reading.log_id.encode(), _encode(reading))


class Feed:
    def __init__(self, userlog: UserLog, pubsub_factory: PubSubFactory) -> None:
        self._log = userlog
        self._pubsub_factory = pubsub_factory
        self._cursor: str | None = None
        self._clients: set[asyncio.Queue[list[Event] | None]] = set()
        self.subscribed = False

    @property
    def cursor(self) -> str | None:
        """The last log id this feed has read (None before it first read the log)."""
        return self._cursor

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[list[Event] | None]]:
        """A queue of event batches from now on; `None` means: too slow, reconnect."""
        queue: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        self._clients.add(queue)
        try:
            yield queue
        finally:
            self._clients.discard(queue)

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._follow()
            except Exception as exc:
                # Never die, never silently: /healthz says 503 meanwhile, and we keep trying.
                self.subscribed = False
                if isinstance(exc, RedisError | OSError):
                    log.warning("redis subscription lost (%s); resubscribing in %.1fs", exc, delay)
                else:
                    log.exception("feed failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                delay = 0.1

    async def _follow(self) -> None:
        async with self._pubsub_factory() as notifications:
            self.subscribed = True
            if self._cursor is None:
                self._cursor = await self._log.last_id()
            await self._catch_up()
            async for _ in notifications:
                await self._catch_up()

    async def _catch_up(self) -> None:
        assert self._cursor is not None
        while True:
            page = await self._log.after(self._cursor, PAGE_SIZE)
            self._cursor = page.last_id
            if page.entries:
                self._broadcast([Event(order, r.log_id, sse_event(r)) for order, r in page.entries])
            if page.scanned < PAGE_SIZE:
                return

    def _broadcast(self, events: list[Event]) -> None:
        for queue in list(self._clients):
            if queue.qsize() >= CLIENT_QUEUE_LIMIT:
                self._clients.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(events)


class PubSubFactory:
    """Async context manager yielding an async iterator of notifications (plus a periodic tick).

    On a cluster the subscription is sharded, like the collector's SPUBLISH.
    """

    def __init__(self, redis: AnyRedis, channel: str) -> None:
        self._redis = redis
        self._channel = channel

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncIterator[None]]:
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()  # learn the cluster's slots first
            pubsub: PubSub = self._redis.pubsub()
            await pubsub.ssubscribe(self._channel)
            read = pubsub.get_sharded_message  # type: ignore[attr-defined]  # ClusterPubSub's own reader
        else:
            pubsub = self._redis.pubsub()
            await pubsub.subscribe(self._channel)
            read = pubsub.get_message
        try:
            yield self._ticks(read)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    @staticmethod
    async def _ticks(read: Callable[..., Awaitable[Any]]) -> AsyncIterator[None]:
        while True:
            message = await read(ignore_subscribe_messages=True, timeout=SAFETY_POLL_SECONDS)
            # Coalesce a burst of notifications into one read of the log.
            while message is not None:
                message = await read(ignore_subscribe_messages=True, timeout=0)
            yield None
