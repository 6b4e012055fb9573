"""The generator: publishes simulated readings with publisher confirms, and never forgets one.

A reading leaves memory only when the broker confirms it; anything nacked, returned or caught in a
dropped connection is published again (same id and ts, so the collector stores it once).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import cast

import aiormq
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from sensorhub import broker
from sensorhub.backoff import Backoff, pause
from sensorhub.batch_publish import Confirmation, publish_batch
from sensorhub.reading import Reading, encode
from sensorhub.settings import Settings

log = logging.getLogger("sensorhub.generator")

WINDOW = 2000  # readings in flight (published, not yet confirmed)
MAX_BATCH = 500  # readings in one write (at --rate 0, the window refills in steps of this)
# Pacing sleeps only when the next reading is due more than a tick away, so at high rates readings
# leave in small bursts instead of one timer wake-up each (a reading's `ts` is the moment it leaves,
# so leaving early adds no latency). Each burst costs a write, a pass of the loop and a confirm:
# at 3,000/s, 10 ms ticks cost the generator about a seventh less CPU per reading than 5 ms ticks,
# which cost a sixth less than 2 ms ticks.
# A wait shorter than STOP_CHECK is a plain sleep (stop is checked right after it); only longer
# ones also wait on the stop event.
TICK = 0.010
STOP_CHECK = 0.1
CONFIRM_TIMEOUT = 10.0  # no confirm for this long with readings in flight: the session is stuck, start another


class _Refused(aiormq.AMQPError):
    """A publish came back unroutable or nacked: reconnect after a pause."""


class _Stalled(aiormq.AMQPError):
    """Readings in flight and no confirm for CONFIRM_TIMEOUT (seen on a quorum queue whose leader was being
    elected as we connected): reconnect, and publish them again."""


class Generator:
    def __init__(
        self,
        settings: Settings,
        readings: Iterator[Reading],
        *,
        rate: float,
        count: int | None,
        on_progress: Callable[[int], None] | None = None,
        silent: Callable[[Reading], bool] | None = None,
    ) -> None:
        self._settings = settings
        self._silent = silent  # a paused station's readings are not sent (see simulation.Pause)
        self._readings = readings
        self._rate = rate
        self._count = count
        self._on_progress = on_progress
        self._retry: deque[Reading] = deque()
        self._produced = 0
        self.confirmed = 0
        self._stop = asyncio.Event()
        self._in_flight: set[Confirmation] = set()
        self._room = asyncio.Event()  # set when a confirm frees a place in the window
        self._refused = asyncio.Event()
        self._answered = time.monotonic()  # when the broker last confirmed or refused a reading

    def stop(self) -> None:
        self._stop.set()

    @property
    def done(self) -> bool:
        return self._stop.is_set() or (self._count is not None and self.confirmed >= self._count)

    async def run(self) -> int:
        """Publish until stopped or `count` readings are confirmed; returns how many were confirmed."""
        backoff = Backoff(0.1, 5.0, self._stop)
        while not self.done:
            confirmed_before = self.confirmed
            try:
                connection = await broker.connect(self._settings, "sensorhub-generator")
            except (aiormq.AMQPError, OSError, TimeoutError) as exc:
                log.warning("rabbitmq unavailable (%s); retrying in %.1fs", exc, backoff.delay)
                await backoff.wait()
                continue
            ended = await self._session(connection)
            if self.done:
                break
            if self.confirmed > confirmed_before:
                backoff.reset()  # the broker took readings: only a broker that takes none is waited on longer
            if ended is not None:
                log.warning("rabbitmq session ended (%s); reconnecting in %.1fs", ended, backoff.delay)
            await backoff.wait()
        return self.confirmed

    async def _session(self, connection: aiormq.abc.AbstractConnection) -> Exception | None:
        """Publish on one connection until done or it fails (the error is returned); then wait for
        the readings in flight, so that each is either confirmed or back in the retry queue."""
        try:
            channel = await broker.open_channel(connection, self._settings, publisher_confirms=True)
            await self._publish_until_done(channel, connection)
        except (aiormq.AMQPError, aiormq.ChannelInvalidStateError, OSError) as exc:
            return exc
        finally:
            await self._settle()
            await broker.close_quietly(connection)
            if self._retry and not self._stop.is_set():
                log.warning("%d readings not confirmed on that connection: publishing them again", len(self._retry))
        return None

    def _next_reading(self) -> Reading | None:
        if self._retry:
            return self._retry.popleft()
        if self._count is not None and self._produced >= self._count:
            return None
        self._produced += 1
        return next(self._readings)

    async def _publish_until_done(self, channel: AbstractChannel, connection: aiormq.abc.AbstractConnection) -> None:
        """Publish in batches: whatever is due (paced) or waiting for a retry, as far as the window allows."""
        started = self._answered = time.monotonic()
        paced = 0  # readings whose time has come, sent or not (a silent station's are not)
        self._refused.clear()
        while not self.done and not connection.is_closed:
            if self._refused.is_set():
                # Returned (the queue is gone) or nacked: start over, which declares the queue again.
                raise _Refused("the broker returned or refused a reading")
            self._check_answered()
            room = min(WINDOW - len(self._in_flight), MAX_BATCH)
            if room <= 0:
                await self._wait_for_room()
                continue
            wanted = min(room, len(self._retry)) if self._retry and self._rate > 0 else room
            if self._rate > 0 and not self._retry and (self._count is None or self._produced < self._count):
                # Readings due within a tick go now, so at high rates they leave in small bursts.
                now = time.monotonic()
                due = math.floor((now + TICK - started) * self._rate) - paced
                if due <= 0:
                    wait = started + (paced + 1) / self._rate - now
                    await (asyncio.sleep(wait) if wait < STOP_CHECK else pause(self._stop, wait))
                    continue
                wanted = min(due, room)
                paced += wanted
            batch = self._take(wanted)
            if batch:
                await self._publish(cast(aiormq.Channel, channel), batch)
            elif self._count is not None and self._produced >= self._count and not self._retry:
                if not self._in_flight:
                    return
                await asyncio.sleep(0.01)  # wait for confirms; nacked ones come back to _retry
            else:
                await asyncio.sleep(0)  # a batch of silent readings only: let the loop breathe

    def _take(self, wanted: int) -> list[Reading]:
        """Up to `wanted` readings to send: retries first; a silent station's fresh readings are dropped."""
        batch: list[Reading] = []
        for _ in range(wanted):
            fresh = not self._retry
            reading = self._next_reading()
            if reading is None:
                break
            if fresh and self._silent is not None and self._silent(reading):
                self._produced -= 1  # never sent, so --count counts it not
                continue
            batch.append(reading)
        return batch

    async def _wait_for_room(self) -> None:
        """Until a confirm frees a place in the window, or CONFIRM_TIMEOUT (then the session may be stuck)."""
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), CONFIRM_TIMEOUT)
        except TimeoutError:
            self._check_answered()

    def _check_answered(self) -> None:
        if self._in_flight and time.monotonic() - self._answered > CONFIRM_TIMEOUT:
            raise _Stalled(f"{len(self._in_flight)} readings in flight and no confirm for {CONFIRM_TIMEOUT:g} s")

    async def _publish(self, channel: aiormq.Channel, batch: list[Reading]) -> None:
        messages = [
            (
                encode(reading),
                Basic.Properties(delivery_mode=2, content_type="application/json", message_id=reading.id),
            )
            for reading in batch
        ]
        try:
            confirmations = await publish_batch(channel, self._settings.queue, messages)
        except BaseException:
            self._retry.extend(batch)  # nothing of the batch was sent
            raise
        for reading, confirmation in zip(batch, confirmations, strict=True):
            self._in_flight.add(confirmation)
            confirmation.add_done_callback(partial(self._answer, reading))

    def _answer(self, reading: Reading, confirmation: Confirmation) -> None:
        """The broker's answer to one reading: confirmed, or back in the retry queue."""
        self._in_flight.discard(confirmation)
        self._room.set()
        if confirmation.cancelled():
            self._retry.append(reading)
            return
        error = confirmation.exception()
        if error is not None:
            self._retry.append(reading)
            if isinstance(error, aiormq.PublishError):
                self._refused.set()
            return
        self._answered = time.monotonic()
        if isinstance(confirmation.result(), Basic.Ack):
            self.confirmed += 1
            if self._on_progress is not None:
                self._on_progress(self.confirmed)
        else:
            self._retry.append(reading)
            self._refused.set()

    async def _settle(self) -> None:
        """Wait for the publishes in flight to be confirmed or given back for a retry."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=10)
        for confirmation in set(self._in_flight):
            confirmation.cancel()
        await asyncio.sleep(0)  # the cancelled ones' callbacks put their readings back


class Progress:
    """A live line on a terminal: confirmed so far and the current rate."""

    def __init__(self, stream: object = sys.stderr) -> None:
        self._stream = stream
        self._last_print = 0.0
        self._last_count = 0
        self._enabled = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, confirmed: int) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last_print < 0.5:
            return
        rate = (confirmed - self._last_count) / (now - self._last_print) if self._last_print else 0.0
        self._last_print, self._last_count = now, confirmed
        print(f"\r  confirmed {confirmed:,}  ({rate:,.0f}/s)   ", end="", file=self._stream, flush=True)  # type: ignore[call-overload]

    def finish(self, confirmed: int) -> None:
        if self._enabled:
            print(f"\r  confirmed {confirmed:,}" + " " * 20, file=self._stream)  # type: ignore[call-overload]
