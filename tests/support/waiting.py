"""Waiting for real services: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster

from sensorhub.keys import Keys


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition", interval: float = 0.02
) -> Any:
    """The predicate's first truthy value (it may be a coroutine function); AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def logged(redis: Redis | RedisCluster, keys: Keys, n: int, users: Sequence[str] = ("user1",)) -> bool:
    """True once the users' logs hold n entries in all (for wait_until)."""
    return sum([int(await redis.xlen(keys.log(user))) for user in users]) == n
