"""The collector's inbox: a batch gathers for a moment only while readings arrive back to back."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sensorhub.pipeline.collector import Inbox
from sensorhub.queue_consumer import Delivery


def _message(n: int) -> Delivery:
    return cast(Delivery, n)  # the inbox never looks inside a delivery


async def test_an_idle_collector_takes_a_lone_reading_at_once() -> None:
    inbox = Inbox()
    inbox.put(_message(1))
    # With a linger far longer than the test's timeout: only an inbox that does not linger returns.
    assert await asyncio.wait_for(inbox.take(100, linger=60), 5) == [1]


async def test_readings_arriving_back_to_back_share_a_batch() -> None:
    inbox = Inbox()
    inbox.put(_message(1))
    assert await inbox.take(100, linger=0.5) == [1]
    inbox.put(_message(2))
    loop = asyncio.get_running_loop()
    for n in (3, 4):
        loop.call_later(0.05, inbox.put, _message(n))  # arrive while the batch of 2 lingers
    assert await inbox.take(100, linger=0.5) == [2, 3, 4]


async def test_a_full_batch_does_not_linger() -> None:
    inbox = Inbox()
    inbox.put(_message(0))
    await inbox.take(100, linger=60)
    for n in range(1, 4):
        inbox.put(_message(n))
    assert await asyncio.wait_for(inbox.take(3, linger=60), 5) == [1, 2, 3]


async def test_a_closed_inbox_hands_over_what_is_left_without_lingering() -> None:
    inbox = Inbox()
    inbox.put(_message(0))
    await inbox.take(100, linger=60)
    inbox.put(_message(1))
    inbox.close()
    taken: list[Any] = await asyncio.wait_for(inbox.take(100, linger=60), 5)
    assert taken == [1]
    assert await asyncio.wait_for(inbox.take(100, linger=60), 5) == []


async def test_the_wait_grows_with_the_arrival_rate_up_to_its_bound() -> None:
    inbox = Inbox()
    inbox.put(_message(1))
    assert await inbox.take(100, linger=60, per_rate=1.0) == [1]
    # The first take saw no arrival rate yet, so however long `linger` is, this one does not wait.
    inbox.put(_message(2))
    inbox.put(_message(3))
    assert await asyncio.wait_for(inbox.take(100, linger=60, per_rate=1.0), 5) == [2, 3]
    # Two readings in a moment is a high rate: now a small batch waits, for `linger` at most.
    inbox.put(_message(4))
    asyncio.get_running_loop().call_later(0.05, inbox.put, _message(5))
    assert await asyncio.wait_for(inbox.take(100, linger=0.5, per_rate=1.0), 5) == [4, 5]
