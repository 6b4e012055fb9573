"""The one backoff every retry loop uses."""

from __future__ import annotations

import asyncio
import time

from sensorhub.backoff import Backoff, pause


async def test_delays_double_up_to_the_cap_and_reset_starts_again() -> None:
    """Each wait doubles the next one, never past the cap; a success starts from the first delay."""
    backoff = Backoff(0.01, 0.03, asyncio.Event())
    seen = []
    for _ in range(4):
        seen.append(backoff.delay)
        assert await backoff.wait() is False
    assert seen == [0.01, 0.02, 0.03, 0.03]
    backoff.reset()
    assert backoff.delay == 0.01


async def test_stop_cuts_a_wait_short_and_is_reported() -> None:
    """A stop asked for during a long wait ends it at once, so retries never delay a shutdown."""
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await pause(stop, 30) is True
    assert time.monotonic() - started < 5


async def test_full_jitter_waits_at_most_the_delay() -> None:
    """With jitter a wait is drawn from 0 to the delay, and the delay still doubles."""
    backoff = Backoff(0.02, 1.0, asyncio.Event(), jitter=True)
    started = time.monotonic()
    await backoff.wait()
    assert time.monotonic() - started < 1.0
    assert backoff.delay == 0.04
