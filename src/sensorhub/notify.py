"""Per-user notifications over RabbitMQ: the collector publishes, a user's app (or `tail`, or a dashboard) consumes.

A notification says "these readings of yours are stored, up to this log id", like the Redis one.
It is a hint: the queue is bounded and drops its oldest, and a batch redelivered after a crash is not
announced again, so an app reads its log after its own cursor when woken, and the log is the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import aiormq
import msgspec
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic

from sensorhub import broker, metrics
from sensorhub.settings import ConfigError, Settings

log = logging.getLogger("sensorhub.notify")

_PROPERTIES = Basic.Properties(content_type="application/json", delivery_mode=2)


class Notification(msgspec.Struct):
    user: str
    keys: list[str]
    last_id: str


encode = msgspec.json.Encoder().encode


class NotificationsLost(ConnectionError):
    """The subscription ended (connection closed, consumer cancelled) or its queue does not exist: subscribe again."""


class Publisher:
    """The collector's side, on a channel of its own (a refused declare closes a channel, never the consumer's).

    Declares a user's queue the first time it sees the user on this connection: no list of users
    anywhere. A notification that found no queue (it expired, or was deleted) makes the next batch of
    that user declare it again.
    """

    def __init__(self, connection: AbstractConnection, settings: Settings) -> None:
        self._connection = connection
        self._settings = settings
        self._exchange = broker.notify_exchange(settings)
        self._declared: set[str] = set()
        self._refused: set[str] = set()  # declaring was refused: not asked again on this connection
        self._channel: AbstractChannel | None = None

    async def open(self) -> None:
        """Declare the exchange, or find it declared by an administrator; ConfigError if neither."""
        channel = await self._new_channel()
        try:
            await broker.declare_notify_exchange(channel, self._settings)
        except aiormq.ChannelAccessRefused:
            channel = await self._new_channel()
            try:
                await channel.exchange_declare(self._exchange, passive=True)
            except aiormq.ChannelNotFoundEntity:
                raise ConfigError(
                    f"SENSORHUB_NOTIFY includes rabbitmq, but exchange {self._exchange!r} does not exist and this "
                    "RabbitMQ user may not declare it"
                ) from None
        self._channel = channel

    async def _new_channel(self) -> AbstractChannel:
        if self._connection.is_closed:
            raise aiormq.AMQPConnectionError("connection closed")
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=False)
        return self._channel

    async def _declare(self, user: str) -> None:
        assert self._channel is not None
        try:
            await broker.declare_notification_queue(self._channel, self._settings, user)
        except (aiormq.ChannelAccessRefused, aiormq.ChannelPreconditionFailed) as exc:
            self._refused.add(user)
            log.warning("cannot declare %s (%s): notifications go where its bindings say", self._queue(user), exc)
            await self._new_channel()
        self._declared.add(user)

    def _queue(self, user: str) -> str:
        return broker.notification_queue(self._settings, user)

    async def publish(self, notifications: Iterable[Notification]) -> None:
        """Publish each, and wait until the broker confirmed it (or returned it: no queue)."""
        pending = list(notifications)
        for notification in pending:
            if notification.user not in self._declared:
                await self._declare(notification.user)
        if not pending:
            return
        channel = self._channel
        assert channel is not None
        answers = await asyncio.gather(
            *(
                channel.basic_publish(
                    encode(n), exchange=self._exchange, routing_key=n.user, properties=_PROPERTIES, mandatory=True
                )
                for n in pending
            ),
            return_exceptions=True,
        )
        for notification, answer in zip(pending, answers, strict=True):
            self._check(notification.user, answer)

    def _check(self, user: str, answer: object) -> None:
        if isinstance(answer, Basic.Ack):
            metrics.RABBITMQ_NOTIFICATIONS.labels(user, "confirmed").inc()
            return
        if isinstance(answer, DeliveredMessage):  # returned: no queue is bound for this user
            metrics.RABBITMQ_NOTIFICATIONS.labels(user, "returned").inc()
            if user not in self._refused:
                self._declared.discard(user)
            log.info("no queue took %s's notification; its next batch declares %s", user, self._queue(user))
        elif isinstance(answer, aiormq.DeliveryError):
            metrics.RABBITMQ_NOTIFICATIONS.labels(user, "refused").inc()
            log.warning("broker refused %s's notification (%s); the log still has the readings", user, answer)
        elif isinstance(answer, BaseException):
            raise answer  # the channel or connection is gone: the collector's session ends


class Subscription:
    """Notifications (JSON bodies) from one user's queue, as they arrive."""

    _END = b""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.ended_because = ""

    def end(self, why: str) -> None:
        if not self.ended_because:
            self.ended_because = why
            self._inbox.put_nowait(self._END)

    async def receive(self, message: DeliveredMessage) -> None:
        self._inbox.put_nowait(message.body)

    async def get(self, within: float | None = None) -> bytes | None:
        """The next notification; None after `within` s without one. NotificationsLost once it ended."""
        try:
            body = self._inbox.get_nowait()
        except asyncio.QueueEmpty:
            try:
                body = await asyncio.wait_for(self._inbox.get(), within)
            except TimeoutError:
                return None
        if body == self._END:
            self._inbox.put_nowait(body)  # stays ended
            raise NotificationsLost(self.ended_because)
        return body


@contextlib.asynccontextmanager
async def subscribe(settings: Settings, user: str, name: str) -> AsyncIterator[Subscription]:
    """Consume `user`'s queue on a connection of its own, named `name`; closed on the way out.

    Declares the queue (with the collector's arguments) when allowed, so a listener can start first;
    an app's least-privilege account, which may only read its queue, consumes what the collector declared.
    Messages are acknowledged on delivery: a notification is a hint, the log is the truth.
    """
    connection = await broker.connect(settings, name)
    try:
        channel, queue = await _usable_queue(connection, settings, user)
        subscription = Subscription()
        connection.closing.add_done_callback(lambda _: subscription.end("connection closed"))
        channel.closing.add_done_callback(lambda _: subscription.end("channel closed"))
        channel.on_consumer_cancel_callbacks.add(lambda _: subscription.end(f"{queue} was deleted"))
        await channel.basic_consume(queue, subscription.receive, no_ack=True)
        log.info("listening on %s", queue)
        yield subscription
    finally:
        await broker.close_quietly(connection)


async def _usable_queue(connection: AbstractConnection, settings: Settings, user: str) -> tuple[AbstractChannel, str]:
    """A channel to consume on, and the user's queue, declared here or known to exist."""
    queue = broker.notification_queue(settings, user)
    channel = await connection.channel()
    try:
        await broker.declare_notify_exchange(channel, settings)
        await broker.declare_notification_queue(channel, settings, user)
    except aiormq.ChannelAccessRefused:
        channel = await connection.channel()
        try:
            await channel.queue_declare(queue, passive=True)
        except aiormq.ChannelNotFoundEntity:
            raise NotificationsLost(
                f"queue {queue} does not exist yet: the collector declares it when it stores {user}'s next "
                "reading with SENSORHUB_NOTIFY including rabbitmq"
            ) from None
    return channel, queue
