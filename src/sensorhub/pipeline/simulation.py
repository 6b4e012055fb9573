"""Plausible readings: each station drifts smoothly, with a daily temperature cycle."""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sensorhub.reading import Reading

log = logging.getLogger("sensorhub.generator")

_STREETS = (
    "ул. Ленина",
    "Невский проспект",
    "ул. Пушкина",
    "Садовая ул.",
    "Baker Street",
    "Rue de Rivoli",
    "Hauptstraße",
    "Main Street",
    "ул. Гагарина",
    "Набережная ул.",
    "Calle Mayor",
    "Via Roma",
)
_CITIES = ("Москва", "Санкт-Петербург", "Казань", "Новосибирск", "London", "Paris", "Berlin", "Madrid")


@dataclass
class _Station:
    user: str
    name: str
    address: str
    mean_temperature: float
    pressure: float
    humidity: float
    temperature_drift: float = 0.0


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class Simulation:
    """An endless, reproducible sequence of readings, round-robin over every station of every user.

    With a seed, the ids, stations, addresses and values repeat exactly; `ts` is always the moment
    the reading is taken.
    """

    def __init__(self, users: Sequence[str], stations_per_user: int, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._run = f"s{seed}" if seed is not None else secrets.token_hex(4)
        self._count = 0
        self._stations = [
            _Station(
                user=user,
                name=f"post-{n:02d}",
                address=f"{self._rng.choice(_STREETS)}, {self._rng.randint(1, 150)}, {self._rng.choice(_CITIES)}",
                mean_temperature=self._rng.uniform(-5.0, 20.0),
                pressure=self._rng.uniform(995.0, 1030.0),
                humidity=self._rng.uniform(35.0, 80.0),
            )
            for user in users
            for n in range(1, stations_per_user + 1)
        ]

    @property
    def stations(self) -> list[tuple[str, str]]:
        """Every (user, station) this simulation produces readings for."""
        return [(s.user, s.name) for s in self._stations]

    def __iter__(self) -> Iterator[Reading]:
        return self

    def __next__(self) -> Reading:
        station = self._stations[self._count % len(self._stations)]
        self._count += 1
        now = datetime.now(UTC)
        rng = self._rng
        station.temperature_drift = 0.98 * station.temperature_drift + rng.gauss(0, 0.15)
        station.pressure = _clamp(station.pressure + rng.gauss(0, 0.2), 960.0, 1050.0)
        station.humidity = _clamp(station.humidity + rng.gauss(0, 0.4), 5.0, 100.0)
        hour = now.hour + now.minute / 60
        daily = 5.0 * math.sin(2 * math.pi * (hour - 9) / 24)
        return Reading(
            id=f"{self._run}-{self._count}",
            user=station.user,
            station=station.name,
            address=station.address,
            ts=now,
            temperature=round(_clamp(station.mean_temperature + daily + station.temperature_drift, -90, 70), 2),
            pressure=round(station.pressure, 1),
            humidity=round(station.humidity, 1),
        )


class Pause:
    """One station silent for a while, as a real one that lost power: `silent(reading)` is true for
    its readings from `after` seconds after start until `seconds` later; then it sends again.

    `station` is a station id (that station of every user) or `user/station`.
    """

    def __init__(self, station: str, seconds: float, after: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.station = station
        self._clock = clock
        start = clock() + after
        self._window = (start, start + seconds)
        self._state = "before"

    def silent(self, reading: Reading) -> bool:
        if self.station not in (reading.station, f"{reading.user}/{reading.station}"):
            return False
        now = self._clock()
        begin, end = self._window
        state = "before" if now < begin else "paused" if now < end else "resumed"
        if state != self._state:
            self._state = state
            if state == "paused":
                log.info("station %s paused: it sends nothing for %g s", self.station, end - begin)
            else:
                log.info("station %s resumed", self.station)
        return state == "paused"
