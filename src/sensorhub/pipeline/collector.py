"""The collector: RabbitMQ queue -> validated readings -> Redis (data, log, notification) -> ack.

A batch is acknowledged only after its readings are in Redis and its invalid messages are in the
dead-letter queue, so any crash or outage leaves the messages in RabbitMQ to be delivered again;
the store's SET NX makes that redelivery harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic
from redis.exceptions import RedisError

from sensorhub import broker, metrics
from sensorhub.broker import ERROR_HEADER
from sensorhub.pipeline.store import Store
from sensorhub.reading import InvalidReading, Reading, parse
from sensorhub.settings import Settings

log = logging.getLogger("sensorhub.collector")

MAX_REASON_CHARS = 500
DEPTH_INTERVAL = 5.0


@dataclass(frozen=True)
class Tuning:
    prefetch: int = 2000
    max_batch: int = 1000
    reconnect_max_delay: float = 5.0


class _SessionEnded(Exception):
    """The broker connection or our consumer went away: reconnect and consume again."""


class Collector:
    def __init__(self, settings: Settings, store: Store, tuning: Tuning = Tuning()) -> None:
        self._settings = settings
        self._store = store
        self._tuning = tuning
        self._stop = asyncio.Event()
        self.rabbitmq_connected = False
        self.redis_ok = True

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> dict[str, bool]:
        return {"rabbitmq": self.rabbitmq_connected, "redis": self.redis_ok}

    async def run(self) -> None:
        """Consume until stop(): reconnects by itself after the broker goes away."""
        delay = 0.1
        while not self._stop.is_set():
            try:
                await self._session()
                delay = 0.1
            except (
                aiormq.AMQPError,
                aiormq.ChannelInvalidStateError,
                OSError,
                _SessionEnded,
                TimeoutError,
            ) as exc:
                self.rabbitmq_connected = False
                log.warning("rabbitmq session ended (%s); reconnecting in %.1fs", _describe(exc), delay)
                await self._sleep(delay)
                delay = min(delay * 2, self._tuning.reconnect_max_delay)
        log.info("collector stopped")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _session(self) -> None:
        connection = await asyncio.wait_for(broker.connect(self._settings, "sensorhub-collector"), 10)
        try:
            channel = await broker.open_channel(connection, self._settings, publisher_confirms=True)
            await channel.basic_qos(prefetch_count=self._tuning.prefetch)
            inbox = _Inbox()
            cancelled = asyncio.Event()
            channel.on_consumer_cancel_callbacks.add(lambda *_: cancelled.set())

            async def receive(message: DeliveredMessage) -> None:
                inbox.put(message)

            consumer_tag = f"sensorhub-collector-{secrets.token_hex(6)}"
            await channel.basic_consume(self._settings.queue, receive, consumer_tag=consumer_tag)
            self.rabbitmq_connected = True
            log.info("consuming %s", self._settings.queue)
            worker = asyncio.create_task(self._work(channel, inbox))
            depth = asyncio.create_task(self._watch_depth(connection))
            stopping = asyncio.create_task(self._stop.wait())
            waiters = {
                worker,
                depth,
                stopping,
                asyncio.shield(connection.closing),
                asyncio.create_task(cancelled.wait()),
            }
            try:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if done != {stopping}:
                    for task in done & {worker, depth}:
                        # aiormq cancels the calls pending on a connection it gives up (say, on a missed
                        # heartbeat): that ends the session, it must not end the collector.
                        if not task.cancelled():
                            task.result()  # re-raise what ended it
                    raise _SessionEnded(
                        "connection closed" if connection.is_closed else "consumer cancelled by the broker"
                    )
                # Stop requested: no new deliveries, then finish what is in hand.
                await channel.basic_cancel(consumer_tag)
                await asyncio.sleep(0)  # let already-received deliveries reach the inbox
                inbox.close()
                await asyncio.wait_for(worker, 4)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        finally:
            self.rabbitmq_connected = False
            await _close_quietly(connection)

    async def _watch_depth(self, connection: aiormq.abc.AbstractConnection) -> None:
        """Queue depths for /metrics, on a channel of their own so a failed check harms nothing."""
        channel = await connection.channel()
        while True:
            for queue in (self._settings.queue, self._settings.dlq):
                declared = await channel.queue_declare(queue, passive=True)
                metrics.QUEUE_DEPTH.labels(queue).set(declared.message_count or 0)
            await asyncio.sleep(DEPTH_INTERVAL)

    async def _work(self, channel: AbstractChannel, inbox: _Inbox) -> None:
        while batch := await inbox.take(self._tuning.max_batch):
            await self._handle(channel, batch)

    async def _handle(self, channel: AbstractChannel, batch: list[DeliveredMessage]) -> None:
        metrics.BATCH_SIZE.observe(len(batch))
        readings: list[Reading] = []
        rejected: list[tuple[DeliveredMessage, InvalidReading]] = []
        for message in batch:
            try:
                readings.append(parse(message.body))
            except InvalidReading as exc:
                rejected.append((message, exc))
        if rejected:
            await self._dead_letter(channel, rejected)
        if readings:
            await self._save(readings)
        await channel.basic_ack(_delivery_tag(batch[-1]), multiple=True)

    async def _save(self, readings: list[Reading]) -> None:
        delay = 0.05
        while True:
            try:
                result = await self._store.save(readings)
                break
            except (RedisError, RuntimeError) as exc:
                # Keep the batch unacknowledged: RabbitMQ holds the readings until Redis is back.
                # (RuntimeError: how uvloop reports a connection reset before redis-py's first write.)
                self.redis_ok = False
                if self._stop.is_set():
                    raise _SessionEnded("stopping while Redis is unavailable") from exc
                log.warning("redis unavailable (%s); batch of %d held, retrying", _describe(exc), len(readings))
                await self._sleep(delay)
                delay = min(delay * 2, 2.0)
        self.redis_ok = True
        now = time.time()
        for reading in readings:
            metrics.LAG.labels(reading.user).observe(now - reading.ts.timestamp())
        for user, stored in result.stored.items():
            metrics.READINGS_STORED.labels(user).inc(stored)
            if stored:
                metrics.NOTIFICATIONS.labels(user).inc()
        for user, duplicates in result.duplicates.items():
            if duplicates:
                metrics.DUPLICATES_SKIPPED.labels(user).inc(duplicates)

    async def _dead_letter(
        self, channel: AbstractChannel, rejected: list[tuple[DeliveredMessage, InvalidReading]]
    ) -> None:
        confirmations = []
        for message, error in rejected:
            reason = str(error)[:MAX_REASON_CHARS]
            props = message.header.properties
            headers = dict(props.headers or {})
            headers[ERROR_HEADER] = reason
            confirmations.append(
                channel.basic_publish(
                    message.body,
                    routing_key=self._settings.dlq,
                    properties=Basic.Properties(
                        delivery_mode=2,
                        headers=headers,
                        message_id=props.message_id or secrets.token_hex(8),  # `sensorhub dlq` names it by this
                        content_type=props.content_type,
                        timestamp=props.timestamp,
                    ),
                    mandatory=True,
                )
            )
        for (message, error), confirmation in zip(rejected, await asyncio.gather(*confirmations), strict=True):
            if not isinstance(confirmation, Basic.Ack):
                raise _SessionEnded(f"dead-letter queue refused a message: {confirmation!r}")
            metrics.DEAD_LETTERED.labels(error.kind).inc()
            log.warning(
                "dead-lettered message %s (%d bytes) to %s: %s",
                message.header.properties.message_id or f"#{_delivery_tag(message)}",
                len(message.body),
                self._settings.dlq,
                error,
            )


class _Inbox:
    """Deliveries waiting to be handled. Whatever arrived while the last batch was being stored
    is the next batch: large under load, a single message when idle (no timer, no added latency).
    """

    def __init__(self) -> None:
        self._messages: deque[DeliveredMessage] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, message: DeliveredMessage) -> None:
        self._messages.append(message)
        self._ready.set()

    def close(self) -> None:
        """No more deliveries: `take` returns what is left, then an empty batch."""
        self._closed = True
        self._ready.set()

    async def take(self, limit: int) -> list[DeliveredMessage]:
        while not self._messages and not self._closed:
            self._ready.clear()
            await self._ready.wait()
        return [self._messages.popleft() for _ in range(min(limit, len(self._messages)))]


def _delivery_tag(message: DeliveredMessage) -> int:
    assert isinstance(message.delivery, Basic.Deliver)
    return int(message.delivery.delivery_tag or 0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _close_quietly(connection: aiormq.abc.AbstractConnection) -> None:
    with contextlib.suppress(TimeoutError, aiormq.AMQPError, OSError, RuntimeError):
        await asyncio.wait_for(connection.close(), 2)
