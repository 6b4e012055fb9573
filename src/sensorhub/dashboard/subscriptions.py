"""Every watched user's notification channel on one Redis Pub/Sub connection, for `sensorhub web`.

A subscription per user would hold a connection per user: a thousand watched users, a thousand
connections opened at once when they arrive together. Here one reader task takes every message and
hands it to the feeds of its channel. Each subscription is the `Notifications` a `Feed` expects
(ticks with the messages since the last, or none after SAFETY_POLL_SECONDS of quiet: the reader
wakes those, once a second, instead of a timer per subscription; each subscription's quiet is
counted from a random point of its first period, so a crowd that arrived together is not woken
together, every feed reading its log at the same moment); when the connection fails, every
subscription's ticks raise, so each feed resubscribes (on a new connection) and catches up from its
cursor, as after any drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sensorhub.dashboard.feed import SAFETY_POLL_SECONDS
from sensorhub.redis_client import text

log = logging.getLogger("sensorhub.web")

READ_SECONDS = 1.0  # the reader's longest wait for a message (it also notices a dead connection then)


class _Ticket:
    """One subscriber of a channel: handed its messages, or failed with the connection."""

    def __init__(self, now: float) -> None:
        self.woken = asyncio.Event()
        self.messages: list[bytes] = []
        self.failure: BaseException | None = None
        self.woken_at = now

    def hand(self, message: bytes, now: float) -> None:
        self.messages.append(message)
        self.woken.set()
        self.woken_at = now

    def fail(self, failure: BaseException) -> None:
        self.failure = failure
        self.woken.set()


class SharedPubSub:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tickets: dict[str, set[_Ticket]] = {}
        self._lock = asyncio.Lock()

    @property
    def channels(self) -> int:
        return len(self._tickets)

    def factory(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[list[bytes]]]:
        """The channel's ticks while the block runs (the `Notifications` of one user's feed)."""
        return self._subscription(channel)

    @contextlib.asynccontextmanager
    async def _subscription(self, channel: str) -> AsyncIterator[AsyncIterator[list[bytes]]]:
        ticket = _Ticket(asyncio.get_running_loop().time() - random.uniform(0, SAFETY_POLL_SECONDS))
        async with self._lock:
            pubsub = await self._connected()
            tickets = self._tickets.setdefault(channel, set())
            tickets.add(ticket)
            if len(tickets) == 1:
                try:
                    await pubsub.subscribe(channel)
                except BaseException:
                    self._forget(channel, ticket)
                    raise
        try:
            yield self._ticks(ticket)
        finally:
            if self._forget(channel, ticket) and self._pubsub is pubsub:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.unsubscribe(channel)

    def _forget(self, channel: str, ticket: _Ticket) -> bool:
        """Drop the ticket; True if it was the channel's last one."""
        tickets = self._tickets.get(channel)
        if tickets is None or ticket not in tickets:
            return False
        tickets.discard(ticket)
        if tickets:
            return False
        del self._tickets[channel]
        return True

    async def _connected(self) -> PubSub:
        """The shared connection, opened (with its reader) if there is none."""
        if self._pubsub is None:
            pubsub = self._redis.pubsub()
            await pubsub.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            self._pubsub = pubsub
            self._reader = asyncio.create_task(self._read(pubsub), name="shared-pubsub")
        return self._pubsub

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        sweep_at = loop.time() + READ_SECONDS
        try:
            while True:
                if (now := loop.time()) >= sweep_at:
                    sweep_at = now + READ_SECONDS
                    self._wake_quiet(now)
                if not pubsub.subscribed:
                    await asyncio.sleep(READ_SECONDS / 10)  # get_message returns at once while nothing is subscribed
                    continue
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_SECONDS)
                if message is not None and message.get("type") == "message":
                    for ticket in self._tickets.get(text(message["channel"]), ()):
                        ticket.hand(message["data"], now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc if isinstance(exc, RedisError) else RedisConnectionError(f"pub/sub reader failed: {exc!r}")
            self._drop(pubsub, failure)
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    def _wake_quiet(self, now: float) -> None:
        """A tick for each subscription that had none for SAFETY_POLL_SECONDS: its feed reads the log."""
        for tickets in self._tickets.values():
            for ticket in tickets:
                if now - ticket.woken_at >= SAFETY_POLL_SECONDS:
                    ticket.woken.set()
                    ticket.woken_at = now

    def _drop(self, pubsub: PubSub, failure: BaseException) -> None:
        """The connection is gone: every subscription's ticks raise `failure`, and the next one reconnects."""
        if self._pubsub is not pubsub:
            return
        self._pubsub = None
        tickets, self._tickets = self._tickets, {}
        for channel_tickets in tickets.values():
            for ticket in channel_tickets:
                ticket.fail(failure)

    @staticmethod
    async def _ticks(ticket: _Ticket) -> AsyncIterator[list[bytes]]:
        while True:
            await ticket.woken.wait()
            if ticket.failure is not None:
                raise ticket.failure
            ticket.woken.clear()
            messages, ticket.messages = ticket.messages, []
            yield messages

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        self._pubsub = None
