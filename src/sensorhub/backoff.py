"""Waiting between retries: one exponential backoff for every loop that reconnects or retries.

Every wait ends early when the process is asked to stop, so a retry loop never delays a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` is set first; True if it was set (the caller should stop)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class Backoff:
    """Delays from `first` doubling up to `cap`; `reset()` after a success starts again at `first`.

    With `jitter`, each wait is drawn uniformly from 0 to the delay ("full jitter"), so that many
    clients cut off together do not come back together.
    """

    def __init__(self, first: float, cap: float, stop: asyncio.Event, *, jitter: bool = False) -> None:
        self._first = first
        self._cap = cap
        self._stop = stop
        self._jitter = jitter
        self.delay = first

    def reset(self) -> None:
        self.delay = self._first

    async def wait(self) -> bool:
        """Wait the current delay, then double it; True if stop was asked for meanwhile."""
        seconds = random.uniform(0, self.delay) if self._jitter else self.delay
        self.delay = min(self.delay * 2, self._cap)
        return await pause(self._stop, seconds)
