"""`sensorhub generate --via mqtt`: the simulated stations publish as real ones do, each over MQTT
with QoS 1 to its own topic `sensors/<user>/<station>`, with an account of its own.

A reading counts as sent once the broker acknowledged it (PUBACK); one caught in a dropped
connection is published again on the next one (same id and ts, so the collector stores it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence

import aiomqtt

from sensorhub import broker, stations
from sensorhub.backoff import Backoff, pause
from sensorhub.reading import Reading, encode
from sensorhub.settings import Settings

log = logging.getLogger("sensorhub.generator")

QUEUE_PER_STATION = 1000  # readings waiting for one station's connection before pacing waits too
PUBLISH_TIMEOUT = 10.0


class _Station:
    """One station's connection: publishes its readings in order, reconnecting as needed."""

    def __init__(self, settings: Settings, user: str, station: str, password: str, stop: asyncio.Event) -> None:
        self.user, self.station = user, station
        self._topics = stations.Topics(settings.namespace)
        self.topic = self._topics.topic(user, station)
        self.queue: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_PER_STATION)
        self.confirmed = 0
        self._host = settings.amqp_node.hostname or "127.0.0.1"
        self._port = settings.mqtt_port
        self._password = password
        self._stop = stop

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self._host,
            self._port,
            username=self._topics.username(self.user, self.station),
            password=self._password,
            identifier=f"sensorhub-generator-{self.user}.{self.station}",
            keepalive=10,
            timeout=PUBLISH_TIMEOUT,
        )

    async def run(self, on_confirmed: Callable[[], None]) -> None:
        backoff = Backoff(0.1, 5.0, self._stop)
        held: Reading | None = None  # taken from the queue, not yet acknowledged
        while not self._stop.is_set():
            try:
                async with self._client() as client:
                    backoff.reset()
                    while True:
                        held = held or await self.queue.get()
                        await client.publish(self.topic, encode(held), qos=1)
                        held = None
                        self.confirmed += 1
                        on_confirmed()
            except aiomqtt.MqttError as exc:
                log.warning("mqtt %s: %s; reconnecting in %.1fs", self.topic, exc, backoff.delay)
                await backoff.wait()


class MqttGenerator:
    """Paces the readings like the AMQP generator and hands each to its station's connection."""

    def __init__(
        self,
        settings: Settings,
        readings: Iterator[Reading],
        passwords: dict[tuple[str, str], str],
        *,
        rate: float,
        count: int | None,
        on_progress: Callable[[int], None] | None = None,
        silent: Callable[[Reading], bool] | None = None,
    ) -> None:
        self._settings = settings
        self._readings = readings
        self._rate = rate
        self._count = count
        self._on_progress = on_progress
        self._silent = silent
        self._stop = asyncio.Event()
        self._stations = {key: _Station(settings, *key, password, self._stop) for key, password in passwords.items()}
        self.confirmed = 0
        self._all_confirmed = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _confirmed(self) -> None:
        self.confirmed += 1
        if self._on_progress is not None:
            self._on_progress(self.confirmed)
        if self._count is not None and self.confirmed >= self._count:
            self._all_confirmed.set()

    async def run(self) -> int:
        """Publish until stopped or `count` readings are acknowledged; returns how many were."""
        tasks = [asyncio.create_task(s.run(self._confirmed)) for s in self._stations.values()]
        try:
            await self._produce()
            if self._count is not None:
                stopped = asyncio.create_task(self._stop.wait())
                done = asyncio.create_task(self._all_confirmed.wait())
                await asyncio.wait({stopped, done}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                done.cancel()
        finally:
            self._stop.set()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.confirmed

    async def _produce(self) -> None:
        started = time.monotonic()
        produced = paced = 0
        while not self._stop.is_set() and (self._count is None or produced < self._count):
            if self._rate > 0:
                paced += 1
                wait = started + paced / self._rate - time.monotonic()
                if wait > 0:
                    await pause(self._stop, wait)
                if self._stop.is_set():
                    return
            reading = next(self._readings)
            if self._silent is not None and self._silent(reading):
                continue
            put = asyncio.create_task(self._stations[(reading.user, reading.station)].queue.put(reading))
            stopped = asyncio.create_task(self._stop.wait())
            await asyncio.wait({put, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not put.done():
                put.cancel()
                return
            produced += 1


async def provision(settings: Settings, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Station accounts for the simulated stations (created, or given a new password): their passwords.

    Also makes sure the readings queue is declared and bound to amq.topic: the MQTT plugin
    acknowledges (PUBACK) a message that no queue is bound for, and it is gone.
    """
    from sensorhub.tools.station_accounts import Accounts

    connection = await broker.connect(settings, "sensorhub-generator")
    try:
        await broker.open_channel(connection, settings, publisher_confirms=False)
    finally:
        await broker.close_quietly(connection)
    async with Accounts(settings) as accounts:
        return {(user, station): (await accounts.add(user, station)).password for user, station in pairs}
