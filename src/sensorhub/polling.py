"""The main loop of a service that works in rounds against Redis (`sensorhub alerts`, `sensorhub push`).

One place for what each needs alike: a round every `seconds` until stopped, a Redis outage waited out
with the shared backoff (never a crash), and whether the last round reached Redis, for its /healthz.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from sensorhub.backoff import Backoff, pause


class Rounds:
    def __init__(self, stop: asyncio.Event, seconds: float, log: logging.Logger) -> None:
        self._stop = stop
        self._seconds = seconds
        self._log = log
        self.redis_ok = False

    async def run(self, one_round: Callable[[], Awaitable[bool]]) -> None:
        """Run `one_round` until stopped; it returns True when work is left, and the next round starts at once."""
        backoff = Backoff(0.1, 2.0, self._stop)
        while not self._stop.is_set():
            try:
                behind = await one_round()
                self.redis_ok = True
                backoff.reset()
                if not behind:
                    await pause(self._stop, self._seconds)
            except (RedisError, OSError) as exc:
                self.redis_ok = False
                self._log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff.delay)
                await backoff.wait()
