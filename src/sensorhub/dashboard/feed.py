"""The live feed: one per dashboard process, shared by all its SSE and WebSocket clients.

Pub/Sub is at-most-once, so a notification is only trusted as far as it goes on exactly from our
cursor: then its entries are taken from it, without reading Redis back; otherwise it is a hint to
read the log after our cursor. On start-up and after every reconnect the feed reads the log anyway,
so a notification missed while disconnected costs nothing. Each event is encoded once per format,
whatever the number of clients.

`Feed.events` is the product's promise (a gap told if the client's cursor was trimmed, replay from
it, then live, each reading once in log order), whatever the transport; `Feed.stream` is its SSE
encoding. It lives here, not in the HTTP layer, so a test can drive it without a server.

Stopping does not rest on cancellation alone: Python 3.11's wait_for (inside redis-py) can swallow a
cancel that lands as its inner call finishes (CPython gh-86296). The feed checks a stop event before
every wait, so a lost cancel only means it stops at the next check instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import msgspec
from redis.exceptions import RedisError

from sensorhub import metrics
from sensorhub.backoff import Backoff
from sensorhub.dashboard.userlog import ReadingWithId, UserLog, parse_log_id
from sensorhub.redis_client import AnyRedis, Read, subscribed

log = logging.getLogger("sensorhub.dashboard")

_encode = msgspec.json.Encoder().encode
SAFETY_POLL_SECONDS = 5.0  # read the log even without a notification, in case the channel went quiet
PAGE_SIZE = 1000
CLIENT_QUEUE_LIMIT = 1000  # batches; a client this far behind is dropped and resumes by id (SENSORHUB_STREAM_BACKLOG)
SSE_RETRY_MS = 1000
HEARTBEAT_SECONDS = 15.0  # a stream that carried nothing this long gets a keep-alive (SSE comment, WS ping)

LogOrder = tuple[int, int]
# What wakes the feed: an async context manager yielding ticks (PubSubFactory, or wakeups.QueueWakeups),
# each the notifications that came since the last one (none: read the log anyway).
Notifications = Callable[[], AbstractAsyncContextManager[AsyncIterator[list[bytes]]]]


class End(enum.Enum):
    """Why a client's stream ended; each transport says so its own way (SSE just ends, a WebSocket closes)."""

    TOO_SLOW = "too far behind: resume from your last id"
    STOPPED = "the dashboard is stopping: resume from your last id"
    REDIS_DOWN = "redis unavailable: resume from your last id"


class Opened:
    """The first item of every stream: the client is subscribed, so nothing stored from now on is missed."""


OPENED = Opened()


class Heartbeat:
    """Nothing happened for a while: proxies must not take the open stream for dead. Sent by the
    feed to all its clients at once (one timer for all of them, not one per stream)."""

    sse = b": ping\n\n"


HEARTBEAT = Heartbeat()


@dataclass(frozen=True)
class Gap:
    """Readings after the client's resume id were trimmed from the log (TTL); the stream goes on from `oldest_id`."""

    oldest_id: str
    last_id: str  # the resume id the client asked for

    @property
    def sse(self) -> bytes:
        return b"event: gap\ndata: %s\n\n" % _encode(self)

    @property
    def ws(self) -> str:
        return _encode({"type": "gap", "oldest_id": self.oldest_id, "last_id": self.last_id}).decode()


@dataclass(frozen=True)
class Event:
    """One reading; each encoding is made once, by the first client that needs it, and shared by the rest."""

    order: LogOrder
    reading: ReadingWithId

    @functools.cached_property
    def json(self) -> bytes:
        """The reading encoded once, whichever transports carry it."""
        return _encode(self.reading)

    @functools.cached_property
    def sse(self) -> bytes:
        return b"id: %s\nevent: reading\ndata: %s\n\n" % (self.reading.log_id.encode(), self.json)

    @functools.cached_property
    def ws(self) -> str:
        return (b'{"type":"reading","id":"%s","reading":%s}' % (self.reading.log_id.encode(), self.json)).decode()


@dataclass(frozen=True)
class Notice:
    """Something other than a reading for every live client (an alert): SSE `event: <type>` without an
    `id:` (the reading cursor is not moved), WebSocket `{"type": <type>, ...data}`. Not replayed: a
    client that reconnects reads what it missed from the API (`/api/alerts`)."""

    type: str
    data: str  # a JSON object

    @functools.cached_property
    def sse(self) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (self.type.encode(), self.data.encode())

    @functools.cached_property
    def ws(self) -> str:
        rest = self.data.strip().removeprefix("{").lstrip()
        return f'{{"type":"{self.type}"' + ("," if rest != "}" else "") + rest


Item = Opened | Gap | list[Event] | Notice | Heartbeat | End
# An End is the last item: too far behind, or the feed stopped.
Batches = asyncio.Queue[list[Event] | Notice | Heartbeat | End]


def _events(entries: list[tuple[LogOrder, ReadingWithId]]) -> list[Event]:
    return [Event(order, reading) for order, reading in entries]


class Feed:
    def __init__(
        self,
        userlog: UserLog,
        pubsub_factory: Notifications,
        *,
        backlog: int | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._log = userlog
        self._pubsub_factory = pubsub_factory
        self._backlog = backlog  # None: CLIENT_QUEUE_LIMIT
        self._cursor: str | None = None
        self._clients: dict[Batches, asyncio.Event | None] = {}
        self._stopping = asyncio.Event()
        self._heartbeat = heartbeat
        self._last_broadcast = 0.0  # loop time
        self.subscribed = False
        self.ready = asyncio.Event()  # set once subscribed with a cursor: from then on no stored reading is missed

    @property
    def cursor(self) -> str | None:
        """The last log id this feed has read (None before it first read the log)."""
        return self._cursor

    @property
    def client_count(self) -> int:
        """Stream clients connected, SSE and WebSocket."""
        return len(self._clients)

    async def stream(self, resume: str | None) -> AsyncIterator[bytes]:
        """One SSE client's bytes: `events(resume)` as Server-Sent Events; it ends where they end.

        The browser resumes with Last-Event-ID after `retry` ms; a gap event has no `id:`, so a drop
        right after it resumes from the same id and is told again.
        """
        sent = metrics.SSE_EVENTS.labels(self._log.user)
        clients = metrics.SSE_CLIENTS.labels(self._log.user)
        clients.inc()
        try:
            async for item in self.events(resume):
                if isinstance(item, list):
                    yield b"".join(e.sse for e in item)
                    sent.inc(len(item))
                elif isinstance(item, Gap | Notice | Heartbeat):
                    yield item.sse
                elif isinstance(item, Opened):
                    yield b"retry: %d\n\n" % SSE_RETRY_MS
        finally:
            clients.dec()

    async def events(self, resume: str | None, dropped: asyncio.Event | None = None) -> AsyncGenerator[Item]:
        """One client's stream, whatever its transport: OPENED, a Gap if readings after `resume` were
        trimmed, the readings after `resume` (if given), then new ones as they come, each once in log
        order; an End last, unless the client leaves first.

        `dropped` is set the moment the client falls too far behind, while its End still waits behind
        the batches it has not taken: a transport blocked on a stalled client can end it at once.
        """
        with self._subscribe(dropped) as live:
            # Subscribe first, then replay: what arrives meanwhile is in `live`, and `seen` drops what
            # the replay already sent. `seen` is read with no wait after subscribing, so nothing the
            # feed broadcasts in between is mistaken for sent. A new client starts from the feed's
            # cursor, so a crowd connecting at once costs Redis nothing.
            try:
                seen = parse_log_id(resume or self._cursor or await self._log.last_id())
                yield OPENED
                if resume is not None:
                    async for item in self._replay(resume):
                        if isinstance(item, Gap):
                            yield item
                            continue
                        events, seen = item
                        if events:
                            yield events
            except RedisError as exc:
                log.warning("stream ended: redis unavailable (%s); the client resumes by itself", exc)
                yield End.REDIS_DOWN
                return
            while isinstance(batch := await live.get(), list | Notice):
                if isinstance(batch, Notice):
                    yield batch
                    continue
                fresh = [e for e in batch if e.order > seen]
                if fresh:
                    yield fresh
                    seen = fresh[-1].order
            yield batch

    async def _replay(self, after: str) -> AsyncIterator[Gap | tuple[list[Event], LogOrder]]:
        """The log after `after`, a page at a time: its events, and the position past the page.

        A Gap comes before the first page if entries after `after` were trimmed. It is checked after
        that page was read: a trim racing the read is then told, never silently missed.
        """
        resume = after
        page = await self._log.after(after, PAGE_SIZE)
        oldest = await self._log.trimmed_before(resume, page.first_id)
        if oldest is not None:
            yield Gap(oldest, resume)
        while True:
            after = page.last_id
            yield _events(page.entries), parse_log_id(after)
            if page.scanned < PAGE_SIZE:
                return
            page = await self._log.after(after, PAGE_SIZE)

    @contextlib.contextmanager
    def _subscribe(self, dropped: asyncio.Event | None = None) -> Iterator[Batches]:
        queue: Batches = asyncio.Queue()
        self._clients[queue] = dropped
        if self._stopping.is_set():
            self._broadcast(None)
        try:
            yield queue
        finally:
            self._clients.pop(queue, None)

    def stop(self) -> None:
        """End every stream now (told the service is stopping), and any that opens later; the feed
        stops following. For a server that is shutting down: its clients need not wait for it."""
        self._stopping.set()
        self._broadcast(None)

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
            self.ready.set()
            loop = asyncio.get_running_loop()
            self._last_broadcast = loop.time()
            while not self._stopping.is_set():
                if not self._take(await anext(notifications)):
                    await self._catch_up()
                if loop.time() - self._last_broadcast >= self._heartbeat:
                    self._broadcast(HEARTBEAT)  # the notifications tick at least every SAFETY_POLL_SECONDS

    def _take(self, notifications: list[bytes]) -> bool:
        """Broadcast what the notifications carry; False if the log must be read instead."""
        assert self._cursor is not None
        events: list[Event] = []
        cursor = self._cursor
        for notification in notifications:
            page = self._log.announced(notification, cursor)
            if page is None:
                break
            cursor = page.last_id
            events += _events(page.entries)
        else:
            self._cursor = cursor
            if events:
                self._broadcast(events)
            return bool(notifications)
        return False

    async def _catch_up(self) -> None:
        assert self._cursor is not None
        while not self._stopping.is_set():
            page = await self._log.after(self._cursor, PAGE_SIZE)
            self._cursor = page.last_id
            if page.entries:
                self._broadcast(_events(page.entries))
            if page.scanned < PAGE_SIZE:
                return

    def announce(self, notice: Notice) -> None:
        """Send `notice` to every live client, after the readings already queued for it."""
        self._broadcast(notice)

    def _broadcast(self, events: list[Event] | Notice | Heartbeat | None) -> None:
        """Queue `events` for every client (None: the feed stopped); a client too far behind is ended."""
        self._last_broadcast = asyncio.get_running_loop().time()
        limit = self._backlog or CLIENT_QUEUE_LIMIT
        for queue, dropped in list(self._clients.items()):
            if events is None or queue.qsize() >= limit:
                del self._clients[queue]
                queue.put_nowait(End.STOPPED if events is None else End.TOO_SLOW)
                if dropped is not None:
                    dropped.set()
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
    async def __call__(self) -> AsyncIterator[AsyncIterator[list[bytes]]]:
        async with subscribed(self._redis, self._channel) as read:
            yield self._ticks(read)

    @staticmethod
    async def _ticks(read: Read) -> AsyncIterator[list[bytes]]:
        while True:
            message = await read(ignore_subscribe_messages=True, timeout=SAFETY_POLL_SECONDS)
            # A burst of notifications is one tick.
            burst = []
            while message is not None:
                if isinstance(data := message.get("data"), bytes):
                    burst.append(data)
                message = await read(ignore_subscribe_messages=True, timeout=0)
            yield burst
