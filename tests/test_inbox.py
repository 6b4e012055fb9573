"""The collector's inbox: a batch gathers for a moment only while readings arrive fast and back to back."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sensorhub.pipeline.collector import Inbox, Linger
from sensorhub.queue_consumer import Delivery

# Far longer than any test's timeout: only an inbox that does not wait for its whole bound returns in time.
FOREVER = Linger(bound=60, from_rate=10, full_rate=20, window=0.01)
HALF_A_SECOND = Linger(bound=0.5, from_rate=10, full_rate=20, window=0.01)


def _message(n: int) -> Delivery:
    return cast(Delivery, n)  # the inbox never looks inside a delivery


async def _arriving_fast(inbox: Inbox, linger: Linger) -> None:
    """Two takes of fifty readings in a moment: far above `full_rate` readings/s over `window`."""
    for _ in range(2):
        for n in range(50):
            inbox.put(_message(n))
        assert len(await asyncio.wait_for(inbox.take(100, linger), 5)) == 50


def test_the_wait_is_none_up_to_from_rate_then_grows_to_its_bound() -> None:
    linger = Linger(bound=0.012, from_rate=1000, full_rate=3000)
    assert [linger.wait(rate) for rate in (0, 1000, 2000, 3000, 50_000)] == [0, 0, 0.006, 0.012, 0.012]


async def test_an_idle_collector_takes_a_lone_reading_at_once() -> None:
    inbox = Inbox()
    inbox.put(_message(1))
    assert await asyncio.wait_for(inbox.take(100, FOREVER), 5) == [1]


async def test_readings_arriving_slowly_never_wait() -> None:
    inbox = Inbox()
    for n in range(5):  # 50 readings/s at most, well under from_rate after the first
        inbox.put(_message(n))
        assert await asyncio.wait_for(inbox.take(100, FOREVER), 5) == [n]
        await asyncio.sleep(0.2)


async def test_readings_arriving_fast_share_a_batch() -> None:
    inbox = Inbox()
    await _arriving_fast(inbox, HALF_A_SECOND)
    inbox.put(_message(1))
    loop = asyncio.get_running_loop()
    for n in (2, 3):
        loop.call_later(0.05, inbox.put, _message(n))  # arrive while the batch of 1 waits
    assert await asyncio.wait_for(inbox.take(100, HALF_A_SECOND), 5) == [1, 2, 3]


async def test_a_batch_that_fills_while_it_waits_goes_at_once() -> None:
    inbox = Inbox()
    await _arriving_fast(inbox, FOREVER)
    inbox.put(_message(1))
    loop = asyncio.get_running_loop()
    for n in (2, 3):
        loop.call_later(0.05, inbox.put, _message(n))
    assert await asyncio.wait_for(inbox.take(3, FOREVER), 5) == [1, 2, 3]


async def test_a_full_batch_does_not_wait() -> None:
    inbox = Inbox()
    await _arriving_fast(inbox, FOREVER)
    for n in range(1, 4):
        inbox.put(_message(n))
    assert await asyncio.wait_for(inbox.take(3, FOREVER), 5) == [1, 2, 3]


async def test_a_closed_inbox_hands_over_what_is_left_without_waiting() -> None:
    inbox = Inbox()
    await _arriving_fast(inbox, FOREVER)
    inbox.put(_message(1))
    asyncio.get_running_loop().call_later(0.05, inbox.close)  # closes while the batch of 1 waits
    taken: list[Any] = await asyncio.wait_for(inbox.take(100, FOREVER), 5)
    assert taken == [1]
    assert await asyncio.wait_for(inbox.take(100, FOREVER), 5) == []
