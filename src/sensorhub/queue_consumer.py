"""Consuming one RabbitMQ queue through pika, on a connection of its own.

Delivery is the collector's hot path. pika decodes whatever frames a read brought in one
synchronous pass and hands each message to a callback, where aiormq awaits every frame, queues it
for its channel and starts a task per delivery: at 3,000 messages/s a bare pika consumer costs
about half the CPU per message of a bare aiormq one (README, "Benchmark"). The consuming connection
is kept apart from the one the collector publishes on, as RabbitMQ advises, so that flow control
holding up a publisher never holds up our acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from sensorhub import broker
from sensorhub.settings import Settings

# What ends a consuming session: the caller connects and consumes again.
ERRORS = (pika.exceptions.AMQPError,)
ANSWER_TIMEOUT = 30.0


class Delivery(NamedTuple):
    tag: int
    exchange: str
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


class QueueConsumer:
    """One connection and channel consuming one queue; `ended` is set, with `why`, when either
    closes or the broker cancels the consumer (say, the queue was deleted)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._connection: AsyncioConnection | None = None
        self._channel: Any = None
        self._tag = f"{name}-{secrets.token_hex(6)}"
        self.ended = asyncio.Event()
        self.why = ""

    async def start(self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]) -> None:
        """Connected to the first node that answers, consuming `queue` with at most `prefetch` unacknowledged."""
        connection = await broker.first_answering(self._settings.amqp_urls, self._connect)
        self._connection = connection
        self._channel = await self._call(lambda done: connection.channel(on_open_callback=done))
        self._channel.add_on_close_callback(lambda _channel, exc: self._end(f"channel closed: {exc}"))
        self._channel.add_on_cancel_callback(lambda _frame: self._end("consumer cancelled by the broker"))
        await self._call(lambda done: self._channel.basic_qos(prefetch_count=prefetch, callback=done))

        def deliver(_channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
            on_delivery(Delivery(method.delivery_tag, method.exchange, method.routing_key, properties, body))

        await self._call(
            lambda done: self._channel.basic_consume(queue, deliver, consumer_tag=self._tag, callback=done)
        )

    def ack(self, tag: int) -> None:
        """Acknowledge every delivery up to `tag`. Raises ChannelWrongStateError once the channel is gone."""
        self._channel.basic_ack(tag, multiple=True)

    async def cancel(self) -> None:
        """No new deliveries; those already delivered were handed over as they came. Any that
        arrive before the broker confirms the cancel are rejected back to the queue by pika."""
        await self._call(lambda done: self._channel.basic_cancel(self._tag, callback=done))

    async def close(self) -> None:
        """Close the connection, whatever state it is in; unacknowledged deliveries go back to the queue."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            connection.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), 2)

    async def _connect(self, url: str) -> AsyncioConnection:
        """A connection with a heartbeat of broker.HEARTBEAT_SECONDS (10 s) unless the URL sets one:
        pika closes it when nothing has come from the broker for 15 s, noticed within 30 s. A broker
        that accepts the socket but never answers the handshake is given up after CONNECT_TIMEOUT."""
        parameters = pika.URLParameters(url)
        if "heartbeat=" not in url:
            parameters.heartbeat = broker.HEARTBEAT_SECONDS
        parameters.client_properties = {"connection_name": self._name}
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Any] = loop.create_future()

        def failed(_connection: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(
                    exc if isinstance(exc, pika.exceptions.AMQPError) else pika.exceptions.AMQPConnectionError(exc)
                )

        def closed(connection: Any, exc: BaseException) -> None:
            failed(connection, exc)
            self._end(f"connection closed: {exc}")

        connection = AsyncioConnection(
            parameters,
            on_open_callback=_answer(opened),
            on_open_error_callback=failed,
            on_close_callback=closed,
            custom_ioloop=loop,
        )
        try:
            await asyncio.wait_for(opened, broker.CONNECT_TIMEOUT)
        except BaseException as exc:  # a timeout, or cancelled by a stopping collector: no socket left behind
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
            if isinstance(exc, TimeoutError):
                raise pika.exceptions.AMQPConnectionError(broker.HANDSHAKE_TIMEOUT) from None
            raise
        return connection

    def _call(self, start: Callable[[Callable[[Any], None]], object]) -> Awaitable[Any]:
        """Start a pika operation and wait for its callback, or for the session to end first."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[Any] = loop.create_future()
        start(_answer(answered))
        return self._unless_ended(answered)

    async def _unless_ended(self, answered: asyncio.Future[Any]) -> Any:
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({answered, ended}, timeout=ANSWER_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not answered.done():
            answered.cancel()
            raise pika.exceptions.AMQPChannelError(self.why or f"no answer from RabbitMQ in {ANSWER_TIMEOUT:g} s")
        return answered.result()

    def _end(self, why: str) -> None:
        if not self.ended.is_set():
            self.why = why
            self.ended.set()


def _answer(future: asyncio.Future[Any]) -> Callable[[Any], None]:
    """A pika callback that settles `future` with its argument (the first time only)."""

    def answer(result: Any) -> None:
        if not future.done():
            future.set_result(result)

    return answer
