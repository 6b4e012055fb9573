"""RabbitMQ names and topology, shared by the generator, the collector and the tools."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiormq
import pika.exceptions
from aiormq.abc import AbstractChannel

from sensorhub import stations
from sensorhub.settings import ConfigError, Settings

QUORUM_DELIVERY_LIMIT = 5
CONNECT_TIMEOUT = 10.0
HEARTBEAT_SECONDS = 10  # asked of the broker unless the URL sets `heartbeat=`
HANDSHAKE_TIMEOUT = f"no answer to the AMQP handshake within {CONNECT_TIMEOUT:g} s"
ERROR_HEADER = "x-sensorhub-error"  # why a message was dead-lettered, set by the collector
T = TypeVar("T")


def queue_arguments(settings: Settings) -> dict[str, Any]:
    """Arguments of the readings queue; a quorum queue sets a poison message aside after a few tries."""
    if settings.queue_type == "quorum":
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": QUORUM_DELIVERY_LIMIT,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.dlq,
            # At-least-once dead-lettering (it needs reject-publish): a dead letter is never dropped.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return {}


class TopologyMismatch(ConfigError):
    """The queue exists with other arguments (say classic, while quorum is configured)."""


def dlq_arguments(settings: Settings) -> dict[str, Any]:
    """A quorum queue's dead letters go to a quorum queue too: a classic queue lives on one node, and
    with that node down nobody could declare it, so the collector could not start on the others."""
    return {"x-queue-type": "quorum"} if settings.queue_type == "quorum" else {}


async def declare(channel: AbstractChannel, settings: Settings) -> None:
    """Declare the durable readings queue and its dead-letter queue (idempotent), and bind the
    queue to `amq.topic` for the stations' MQTT topics (RabbitMQ's MQTT plugin publishes there)."""
    try:
        await channel.queue_declare(settings.dlq, durable=True, arguments=dlq_arguments(settings))
    except aiormq.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"dead-letter queue {settings.dlq!r} already exists with other arguments than a {settings.queue_type} "
            f"queue ({exc}); a queue cannot change type: move its messages (sensorhub dlq) and delete it"
        ) from None
    try:
        await channel.queue_declare(settings.queue, durable=True, arguments=queue_arguments(settings))
    except aiormq.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"queue {settings.queue!r} already exists with other arguments than a {settings.queue_type} queue "
            f"({exc}); a queue cannot change type: use a new SENSORHUB_QUEUE, or move the messages and delete it"
        ) from None
    topics = stations.Topics(settings.namespace)
    await channel.queue_bind(settings.queue, stations.TOPIC_EXCHANGE, routing_key=topics.binding_key)


async def open_channel(
    connection: aiormq.abc.AbstractConnection, settings: Settings, *, publisher_confirms: bool
) -> AbstractChannel:
    """A channel on which the queues are known to exist.

    Declares them when allowed; a least-privilege account (no configure permission) instead checks
    passively that an administrator declared them.
    """
    channel = await connection.channel(publisher_confirms=publisher_confirms)
    try:
        await declare(channel, settings)
    except aiormq.ChannelAccessRefused:
        channel = await connection.channel(publisher_confirms=publisher_confirms)
        for queue in (settings.queue, settings.dlq):
            await channel.queue_declare(queue, passive=True)
    return channel


async def connect(settings: Settings, name: str) -> aiormq.abc.AbstractConnection:
    """An aiormq connection to the first node of SENSORHUB_AMQP_URL that answers."""
    return await first_answering(settings.amqp_urls, lambda url: _connect_one(url, name))


async def first_answering(urls: Sequence[str], connect_one: Callable[[str], Awaitable[T]]) -> T:
    """A connection to the first node that answers, tried in the order listed.

    The clients take one URL, so the list is walked here, once for every caller: each process
    reconnects through this when its connection goes away, and so moves to another node when its
    node died. Raises the last node's error (naming every node tried) when none answers.
    """
    failures: list[str] = []
    for url in urls:
        try:
            return await connect_one(url)
        except (aiormq.AMQPConnectionError, pika.exceptions.AMQPConnectionError, OSError) as exc:
            if len(urls) == 1:
                raise
            failures.append(f"{_where(url)}: {str(exc) or type(exc).__name__}")
    raise aiormq.AMQPConnectionError(f"no RabbitMQ node answered ({'; '.join(failures)})")


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


async def _connect_one(url: str, name: str) -> aiormq.abc.AbstractConnection:
    """A connection with heartbeats: a silent (half-open) broker is given up after 33-38 s
    (aiormq allows three missed 11 s beats). A broker that accepts the socket but never answers
    the handshake is given up after CONNECT_TIMEOUT."""
    if "heartbeat=" not in url:
        url += ("&" if "?" in url else "?") + f"heartbeat={HEARTBEAT_SECONDS}"
    try:
        return await asyncio.wait_for(aiormq.connect(url, client_properties={"connection_name": name}), CONNECT_TIMEOUT)
    except TimeoutError:
        raise aiormq.AMQPConnectionError(HANDSHAKE_TIMEOUT) from None
    except RuntimeError as exc:
        # uvloop reports a connection reset before our first write as RuntimeError ("handler is
        # closed"), where asyncio's own loop says ConnectionError: treat it as the latter.
        raise aiormq.AMQPConnectionError(f"connection reset while connecting: {exc}") from exc


async def close_quietly(connection: aiormq.abc.AbstractConnection) -> None:
    """Close at the end of a session that may already be broken: there is nobody left to tell."""
    with contextlib.suppress(TimeoutError, aiormq.AMQPError, OSError, RuntimeError):
        await asyncio.wait_for(connection.close(), 2)


# --- per-user notification queues ------------------------------------------------------------------
# Bounds of `<user>_notifications`, fixed rather than derived from settings: an x-argument that
# differs from the queue's makes a redeclare fail (PRECONDITION_FAILED), so every declarer (the
# collector, dashboards, `tail`, a user's app) must pass the very same NOTIFICATION_QUEUE_ARGUMENTS.
NOTIFY_EXCHANGE = "sensorhub.notify"
NOTIFICATION_MAX_LENGTH = 1000  # messages; the oldest is dropped first (a hint, the log has them all)
NOTIFICATION_TTL_MS = 3600 * 1000  # an unread notification older than an hour is gone
NOTIFICATION_EXPIRES_MS = 24 * 3600 * 1000  # a queue nobody consumed or declared for a day is deleted
NOTIFICATION_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-max-length": NOTIFICATION_MAX_LENGTH,
    "x-overflow": "drop-head",
    "x-message-ttl": NOTIFICATION_TTL_MS,
    "x-expires": NOTIFICATION_EXPIRES_MS,
}


def notify_exchange(settings: Settings) -> str:
    """`sensorhub.notify`, or `<namespace>.sensorhub.notify` with a namespace."""
    return f"{settings.namespace}.{NOTIFY_EXCHANGE}" if settings.namespace else NOTIFY_EXCHANGE


def notification_queue(settings: Settings, user: str) -> str:
    """`<user>_notifications`, or `<namespace>.<user>_notifications` with a namespace."""
    name = f"{user}_notifications"
    return f"{settings.namespace}.{name}" if settings.namespace else name


async def declare_notify_exchange(channel: AbstractChannel, settings: Settings) -> None:
    """The durable direct exchange the collector publishes notifications to, routing key = user."""
    await channel.exchange_declare(notify_exchange(settings), exchange_type="direct", durable=True)


async def declare_notification_queue(channel: AbstractChannel, settings: Settings, user: str) -> str:
    """Declare the user's bounded queue and bind it to the exchange with key `user` (idempotent); its name."""
    queue = notification_queue(settings, user)
    await channel.queue_declare(queue, durable=True, arguments=NOTIFICATION_QUEUE_ARGUMENTS)
    await channel.queue_bind(queue, notify_exchange(settings), routing_key=user)
    return queue
