"""The live feed: one per dashboard process, shared by all its SSE clients.

Pub/Sub is at-most-once, so a notification is only a hint to read the log after our cursor. On
start-up and after every reconnect the feed reads the log anyway, so a notification missed while
disconnected costs nothing. Each event is encoded once, whatever the number of clients.

`Feed.stream` is the product's promise (replay from the client's cursor, then live, each reading
once in log order); it lives here, not in the HTTP layer, so a test can drive it without a server.

Stopping does not rest on cancellation alone: Python 3.11's wait_for (inside redis-py) can swallow a
cancel that lands as its inner call finishes (CPython gh-86296). The feed checks a stop event before
every wait, so a lost cancel only means it stops at the next check instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from sensorhub import metrics
from sensorhub.backoff import Backoff
from sensorhub.dashboard.userlog import ReadingWithId, UserLog, parse_log_id
from sensorhub.redis_client import AnyRedis

log = logging.getLogger("sensorhub.dashboard")

_encode = msgspec.json.Encoder().encode
SAFETY_POLL_SECONDS = 5.0  # read the log even without a notification, in case the channel went quiet
PAGE_SIZE = 1000
CLIENT_QUEUE_LIMIT = 1000  # batches; a client this far behind is dropped and resumes via Last-Event-ID
SSE_RETRY_MS = 1000

LogOrder = tuple[int, int]
Batches = asyncio.Queue[list["Event"] | None]  # None: the stream ends (too far behind, or the feed stopped)
# What wakes the feed: an async context manager yielding ticks (PubSubFactory, or wakeups.QueueWakeups).
Notifications = Callable[[], AbstractAsyncContextManager[AsyncIterator[None]]]


@dataclass(frozen=True)
class Event:
    order: LogOrder
    sse: bytes


def sse_event(reading: ReadingWithId) -> bytes:
    return b"id: %s\nevent: reading\ndata: %s\n\n" % (reading.log_id.encode(), _encode(reading))


def _events(entries: list[tuple[LogOrder, ReadingWithId]]) -> list[Event]:
    return [Event(order, sse_event(reading)) for order, reading in entries]


class Feed:
    def __init__(self, userlog: UserLog, pubsub_factory: Notifications) -> None:
        self._log = userlog
        self._pubsub_factory = pubsub_factory
        self._cursor: str | None = None
        self._clients: set[Batches] = set()
        self._stopping = asyncio.Event()
        self.subscribed = False

    @property
    def cursor(self) -> str | None:
        """The last log id this feed has read (None before it first read the log)."""
        return self._cursor

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def stream(self, resume: str | None) -> AsyncIterator[bytes]:
        """One SSE client's bytes: the readings after `resume` (if given), then new ones as they come.

        Ends when the client falls too far behind (its browser resumes with Last-Event-ID), when
        Redis fails mid-replay, or when the feed stops.
        """
        sent = metrics.SSE_EVENTS.labels(self._log.user)
        with self._subscribe() as live:
            # Subscribe first, then replay: what arrives meanwhile is in `live`, and `seen` drops what
            # the replay already sent. `seen` is read with no wait after subscribing, so nothing the
            # feed broadcasts in between is mistaken for sent. A new client starts from the feed's
            # cursor, so a crowd connecting at once costs Redis nothing.
            try:
                seen = parse_log_id(resume or self._cursor or await self._log.last_id())
                yield b"retry: %d\n\n" % SSE_RETRY_MS
                if resume is not None:
                    async for events, past in self._replay(resume):
                        if events:
                            yield b"".join(e.sse for e in events)
                            sent.inc(len(events))
                        seen = past
            except RedisError as exc:
                log.warning("stream ended: redis unavailable (%s); the browser resumes by itself", exc)
                return
            while (batch := await live.get()) is not None:
                fresh = [e for e in batch if e.order > seen]
                if fresh:
                    yield b"".join(e.sse for e in fresh)
                    sent.inc(len(fresh))
                    seen = fresh[-1].order

    async def _replay(self, after: str) -> AsyncIterator[tuple[list[Event], LogOrder]]:
        """The log after `after`, a page at a time: its events, and the position past the page."""
        while True:
            page = await self._log.after(after, PAGE_SIZE)
            after = page.last_id
            yield _events(page.entries), parse_log_id(after)
            if page.scanned < PAGE_SIZE:
                return

    @contextlib.contextmanager
    def _subscribe(self) -> Iterator[Batches]:
        queue: Batches = asyncio.Queue()
        self._clients.add(queue)
        if self._stopping.is_set():
            self._broadcast(None)
        metrics.SSE_CLIENTS.labels(self._log.user).inc()
        try:
            yield queue
        finally:
            self._clients.discard(queue)
            metrics.SSE_CLIENTS.labels(self._log.user).dec()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Follow the log while the block runs; on exit the feed has stopped and its streams have ended."""
        task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            self._stopping.set()
            task.cancel()  # to interrupt a read; if the cancel is lost, the stop checks end the feed
            await asyncio.wait({task})

    async def _run(self) -> None:
        backoff = Backoff(0.1, 2.0, self._stopping)
        try:
            while not self._stopping.is_set():
                try:
                    await self._follow(backoff)
                except Exception as exc:
                    # Never die, never silently: /healthz says 503 meanwhile, and we keep trying.
                    self.subscribed = False
                    if isinstance(exc, RedisError | OSError):
                        log.warning(
                            "subscription to notifications lost (%s); resubscribing in %.1fs", exc, backoff.delay
                        )
                    else:
                        log.exception("feed failed; retrying in %.1fs", backoff.delay)
                    await backoff.wait()
        finally:
            self.subscribed = False
            self._broadcast(None)

    async def _follow(self, backoff: Backoff) -> None:
        async with self._pubsub_factory() as notifications:
            self.subscribed = True
            backoff.reset()
            if self._cursor is None:
                self._cursor = await self._log.last_id()
            await self._catch_up()
            while not self._stopping.is_set():
                await anext(notifications)
                await self._catch_up()

    async def _catch_up(self) -> None:
        assert self._cursor is not None
        while not self._stopping.is_set():
            page = await self._log.after(self._cursor, PAGE_SIZE)
            self._cursor = page.last_id
            if page.entries:
                self._broadcast(_events(page.entries))
            if page.scanned < PAGE_SIZE:
                return

    def _broadcast(self, events: list[Event] | None) -> None:
        for queue in list(self._clients):
            if events is None or queue.qsize() >= CLIENT_QUEUE_LIMIT:
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
