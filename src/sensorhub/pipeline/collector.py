"""The collector: RabbitMQ queue -> validated readings -> Redis (data, log, notification) -> ack.

A batch is acknowledged only after its readings are in Redis and its invalid messages are in the
dead-letter queue, so any crash or outage leaves the messages in RabbitMQ to be delivered again;
the store's SET NX makes that redelivery harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic
from redis.exceptions import RedisError

from sensorhub import broker, metrics, notify, queue_consumer, stations
from sensorhub.backoff import Backoff
from sensorhub.broker import ERROR_HEADER
from sensorhub.pipeline.store import SaveResult, Store
from sensorhub.queue_consumer import Delivery
from sensorhub.reading import InvalidReading, Reading, parse
from sensorhub.settings import Settings

log = logging.getLogger("sensorhub.collector")

MAX_REASON_CHARS = 500
DEPTH_INTERVAL = 5.0
REPLICA_WAIT_MS = 1000  # how long one WAIT may take before the batch is stored and waited on again
FINISH_SECONDS = 4.0  # the batch in hand after stop(); SIGTERM promises an exit within 5 s


@dataclass(frozen=True)
class Linger:
    """How long a small batch waits for more readings, by the rate they arrive at (readings/s,
    smoothed over about `window` seconds): not at all up to `from_rate`, then longer as the rate
    grows, `bound` from `full_rate` on.

    Each batch costs a Redis round trip, an ack and a notification to every dashboard, so at high
    rates batches of a few readings cost several times the CPU of batches of thirty, and a CPU short
    of time is what makes latency grow. At low rates there is CPU to spare: readings do not wait.
    """

    bound: float = 0.012
    from_rate: float = 1500.0
    full_rate: float = 3000.0
    window: float = 0.1

    def wait(self, rate: float) -> float:
        if rate <= self.from_rate:
            return 0.0
        return self.bound * min(1.0, (rate - self.from_rate) / (self.full_rate - self.from_rate))


@dataclass(frozen=True)
class Tuning:
    prefetch: int = 2000
    max_batch: int = 1000
    reconnect_max_delay: float = 5.0
    linger: Linger = Linger()


class _SessionEnded(Exception):
    """The broker connection or our consumer went away: reconnect and consume again."""


# What ends a session but not the collector: it reconnects after a backoff.
_SESSION_ERRORS = (
    aiormq.AMQPError,
    aiormq.ChannelInvalidStateError,
    *queue_consumer.ERRORS,
    OSError,
    TimeoutError,
    _SessionEnded,
)


class Collector:
    def __init__(self, settings: Settings, store: Store, tuning: Tuning = Tuning()) -> None:
        self._settings = settings
        self._topics = stations.Topics(settings.namespace)
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
        backoff = Backoff(0.1, self._tuning.reconnect_max_delay, self._stop)
        while not self._stop.is_set():
            try:
                async with self._consuming() as consumer:
                    backoff.reset()  # the broker took us: a later loss starts again at the shortest wait
                    await self._serve(consumer)
            except _SESSION_ERRORS as exc:
                log.warning("rabbitmq session ended (%s); reconnecting in %.1fs", _describe(exc), backoff.delay)
                await backoff.wait()
        log.info("collector stopped")

    @contextlib.asynccontextmanager
    async def _consuming(self) -> AsyncIterator[_Consumer]:
        """A session: connected, queues declared, prefetch limited, consuming. Closed on the way out.

        Two connections: one publishes (dead letters, notifications) and watches the queue depth;
        the other only consumes and acknowledges (`queue_consumer`).
        """
        connection = await broker.connect(self._settings, "sensorhub-collector")
        deliveries = queue_consumer.QueueConsumer(self._settings, "sensorhub-collector")
        try:
            channel = await broker.open_channel(connection, self._settings, publisher_confirms=True)
            notifier = None
            if "rabbitmq" in self._settings.notify:
                notifier = notify.Publisher(connection, self._settings)
                await notifier.open()
            consumer = _Consumer(connection, channel, deliveries, notifier)
            await deliveries.start(self._settings.queue, self._tuning.prefetch, consumer.receive)
            self.rabbitmq_connected = True
            log.info("consuming %s", self._settings.queue)
            yield consumer
        finally:
            self.rabbitmq_connected = False
            await deliveries.close()
            await broker.close_quietly(connection)

    async def _serve(self, consumer: _Consumer) -> None:
        """Handle batches until stop() or the session ends; on stop, finish the batch in hand.

        Raises what ended the session (the connection closed, the broker cancelled us, the worker or
        the depth check failed) so that run() reconnects.
        """
        worker = asyncio.create_task(self._work(consumer))
        depth = asyncio.create_task(self._watch_depth(consumer.connection, consumer))
        stopping = asyncio.create_task(self._stop.wait())
        waiters = {
            worker,
            depth,
            stopping,
            asyncio.shield(consumer.connection.closing),
            asyncio.create_task(consumer.deliveries.ended.wait()),
        }
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if done != {stopping}:
                _raise_why_ended(done & {worker, depth}, consumer)
            await consumer.cancel()
            await asyncio.wait_for(worker, FINISH_SECONDS)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _watch_depth(self, connection: AbstractConnection, consumer: _Consumer) -> None:
        """Queue depths for /metrics, on a channel of their own so a failed check harms nothing.

        Also a watchdog: messages ready at two checks while our consumer, idle, received nothing between them
        means the broker stopped delivering to it (seen on a quorum queue whose leader was being
        elected as we subscribed): the session ends and run() subscribes again.
        """
        channel = await connection.channel()
        received, was_ready = -1, 0
        while True:
            for queue in (self._settings.queue, self._settings.dlq):
                declared = await channel.queue_declare(queue, passive=True)
                metrics.QUEUE_DEPTH.labels(queue).set(declared.message_count or 0)
                if queue == self._settings.queue:
                    ready = declared.message_count or 0
            if ready and was_ready and consumer.inbox.idle and consumer.received == received:
                raise _SessionEnded(f"{ready} messages ready but none delivered to us for {DEPTH_INTERVAL:g} s")
            received, was_ready = consumer.received, ready
            await asyncio.sleep(DEPTH_INTERVAL)

    async def _work(self, consumer: _Consumer) -> None:
        tuning = self._tuning
        while batch := await consumer.inbox.take(tuning.max_batch, tuning.linger):
            await self._handle(consumer, batch)

    async def _handle(self, consumer: _Consumer, batch: list[Delivery]) -> None:
        metrics.BATCH_SIZE.observe(len(batch))
        readings: list[Reading] = []
        rejected: list[tuple[Delivery, InvalidReading]] = []
        for message in batch:
            try:
                readings.append(self._topics.check(parse(message.body), message.exchange, message.routing_key))
            except InvalidReading as exc:
                rejected.append((message, exc))
        if rejected:
            await self._dead_letter(consumer.channel, rejected)
        if readings:
            result = await self._save_with_retry(readings)
            _record(readings, result)
            if consumer.notifier is not None:  # confirmed before the ack; a hint: a redelivered batch is not announced
                added = result.added.items()
                await consumer.notifier.publish(notify.Notification(u, a.keys, a.last_id) for u, a in added)
        consumer.deliveries.ack(batch[-1].tag)

    async def _save_with_retry(self, readings: list[Reading]) -> SaveResult:
        """Store, retrying until Redis takes the batch (and, with SENSORHUB_REDIS_MIN_REPLICAS, until
        that many replicas of each master it went to have it).

        Meanwhile the batch stays unacknowledged, so RabbitMQ holds the readings until Redis is back
        and a crash loses nothing. After stop() one last try is made before giving up the batch.
        A batch too few replicas have is stored again before the next WAIT: a master that died
        before replicating it was replaced by a replica without it, and SET NX skips what is there.
        """
        backoff = Backoff(0.05, 2.0, self._stop)
        result: SaveResult | None = None
        while True:
            try:
                saved = await self._store.save(readings)
                result = saved if result is None else result.then(saved)
                short = await self._replicas_short(readings)
            except RedisError as exc:
                self.redis_ok = False
                if self._stop.is_set():
                    raise _SessionEnded("stopping while Redis is unavailable") from exc
                log.warning("redis unavailable (%s); batch of %d held, retrying", _describe(exc), len(readings))
                await backoff.wait()
                continue
            self.redis_ok = True
            if not short:
                return result
            if self._stop.is_set():
                raise _SessionEnded("stopping before Redis replicas had the batch")
            log.warning("%s; batch of %d held, storing it again", short, len(readings))
            await backoff.wait()

    async def _replicas_short(self, readings: list[Reading]) -> str:
        """'' when SENSORHUB_REDIS_MIN_REPLICAS replicas have the batch (or none are asked for); else why not."""
        wanted = self._settings.redis_min_replicas
        if not wanted:
            return ""
        have = await self._store.replicas({r.user for r in readings}, wanted, REPLICA_WAIT_MS)
        return "" if have >= wanted else f"WAIT: {have} of {wanted} Redis replicas have the batch"

    async def _dead_letter(self, channel: AbstractChannel, rejected: list[tuple[Delivery, InvalidReading]]) -> None:
        confirmations = []
        for message, error in rejected:
            reason = str(error)[:MAX_REASON_CHARS]
            props = message.properties
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
                        timestamp=None if props.timestamp is None else datetime.fromtimestamp(props.timestamp, UTC),
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
                message.properties.message_id or f"#{message.tag}",
                len(message.body),
                self._settings.dlq,
                error,
            )


class Inbox:
    """Deliveries waiting to be handled. Whatever arrived while the last batch was being stored
    is the next batch: large under load, a single message when idle.

    While readings arrive back to back (the last batch was taken less than the wait ago), a small
    batch waits for more, as long as `Linger` says for the rate they arrive at, and no longer than
    until it is full. An idle collector never waits: a reading after a quiet spell is handled at once.
    """

    def __init__(self) -> None:
        self._messages: deque[Delivery] = deque()
        self._ready = asyncio.Event()
        self._enough = 1  # `_ready` is set once this many messages are in
        self._closed = False
        self._last_take = -math.inf
        self._rate = 0.0  # readings per second taken, each take's rate weighted by the time it covers
        self.idle = False  # the worker waits for deliveries: nothing received is unhandled

    def put(self, message: Delivery) -> None:
        self._messages.append(message)
        if len(self._messages) >= self._enough:
            self._ready.set()

    def close(self) -> None:
        """No more deliveries: `take` returns what is left, then an empty batch."""
        self._closed = True
        self._ready.set()

    async def take(self, limit: int, linger: Linger | None = None) -> list[Delivery]:
        self.idle = True
        try:
            await self._until(1)
        finally:
            self.idle = False
        loop = asyncio.get_running_loop()
        wait = linger.wait(self._rate) if linger else 0.0
        if len(self._messages) < limit and loop.time() - self._last_take < wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._until(limit)
        batch = [self._messages.popleft() for _ in range(min(limit, len(self._messages)))]
        now = loop.time()
        if linger:
            covered = max(now - self._last_take, 1e-6)
            weight = -math.expm1(-covered / linger.window)  # 1 - e^(-covered/window)
            self._rate += (len(batch) / covered - self._rate) * weight
        self._last_take = now
        return batch

    async def _until(self, count: int) -> None:
        """Until `count` messages are in, or the inbox is closed."""
        self._enough = count
        try:
            while len(self._messages) < count and not self._closed:
                self._ready.clear()
                await self._ready.wait()
        finally:
            self._enough = 1


class _Consumer:
    """A session's parts: deliveries arrive in `inbox` from `deliveries` (their own connection);
    dead letters and notifications go out on `channel` of `connection`."""

    def __init__(
        self,
        connection: AbstractConnection,
        channel: AbstractChannel,
        deliveries: queue_consumer.QueueConsumer,
        notifier: notify.Publisher | None = None,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.deliveries = deliveries
        self.notifier = notifier  # the per-user RabbitMQ notifications, when SENSORHUB_NOTIFY asks for them
        self.inbox = Inbox()
        self.received = 0  # deliveries so far, for the watchdog

    def receive(self, message: Delivery) -> None:
        self.received += 1
        self.inbox.put(message)

    async def cancel(self) -> None:
        """No new deliveries: the inbox ends after those already received."""
        await self.deliveries.cancel()
        self.inbox.close()


def _raise_why_ended(finished: set[asyncio.Future[Any]], consumer: _Consumer) -> NoReturn:
    for task in finished:
        # aiormq cancels the calls pending on a connection it gives up (say, on a missed heartbeat):
        # that ends the session, it must not end the collector.
        if not task.cancelled():
            task.result()  # re-raise what ended it
    raise _SessionEnded(consumer.deliveries.why or "publishing connection closed")


def _record(readings: list[Reading], result: SaveResult) -> None:
    """Metrics of a stored batch: lag from reading to store, and what was new or a duplicate."""
    now = time.time()
    metrics.LAG.observe_all(now - reading.ts.timestamp() for reading in readings)
    for user, stored in result.stored.items():
        metrics.READINGS_STORED.add(user, stored)
    for user in result.announced:
        metrics.NOTIFICATIONS.add(user)
    for user, duplicates in result.duplicates.items():
        if duplicates:
            metrics.DUPLICATES_SKIPPED.add(user, duplicates)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
