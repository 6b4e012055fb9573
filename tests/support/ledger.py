"""The ledger every fault test ends with: confirmed = stored = streamed, each reading once, in log order.

Confirmed: the ids the broker confirmed to the generator (it exits 0 only when all N are confirmed).
Stored: the ids in the user's Redis log, each entry checked against its data key. Streamed: the ids
a browser-like SSE client received, resuming with Last-Event-ID after every drop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sensorhub.dashboard.userlog import parse_log_id
from sensorhub.keys import Keys
from tests.support.processes import Process, alive
from tests.support.sse import SseClient
from tests.support.waiting import wait_until


async def log_ids(redis: Redis, keys: Keys, user: str = "user1") -> list[str]:
    """The ids of the user's log entries, in log order (the entries only: no data key is read)."""
    return [entry_id.decode() for entry_id, _ in await redis.xrange(keys.log(user))]


async def stored_log(redis: Redis, keys: Keys, user: str = "user1") -> list[tuple[str, str]]:
    """(log id, reading id) of every entry in the user's log, in log order, each checked against its data key."""
    entries = await redis.xrange(keys.log(user))
    result = []
    for start in range(0, len(entries), 1000):
        chunk = entries[start : start + 1000]
        values = await redis.mget([fields[b"key"] for _, fields in chunk])
        for (log_id, fields), value in zip(chunk, values, strict=True):
            assert value is not None, f"log entry {log_id!r} names {fields[b'key']!r}, which is not stored"
            result.append((log_id.decode(), json.loads(value)["id"]))
    return result


async def stored_ids(redis: Redis, keys: Keys, user: str = "user1") -> list[str]:
    """Reading ids in the user's log, in log order, checked against their data keys."""
    return [reading_id for _, reading_id in await stored_log(redis, keys, user)]


def generated_ids(count: int, seed: int) -> list[str]:
    """The ids `sensorhub generate --count COUNT --seed SEED` gives its readings."""
    return [f"s{seed}-{n}" for n in range(1, count + 1)]


async def confirmed_ids(generator: Process, count: int, seed: int, timeout: float = 60) -> list[str]:
    """The generator's ids, once it exits 0 (= the broker confirmed all `count`)."""
    code = await generator.exit_code(timeout)
    assert code == 0, f"generator exited {code}:\n{generator.output[-3000:]}"
    return generated_ids(count, seed)


async def _logged(redis: Redis, keys: Keys, user: str) -> int:
    try:
        return int(await redis.xlen(keys.log(user)))
    except (RedisError, OSError):
        return 0  # the test's own Redis may be restarting


async def logged_at_least(
    redis: Redis, keys: Keys, total: int, *watch: Process, user: str = "user1", timeout: float = 20
) -> None:
    """Wait until `total` readings are logged, failing at once if a watched process dies."""

    async def enough() -> bool:
        return alive(*watch) and await _logged(redis, keys, user) >= total

    await wait_until(enough, timeout, f"{total} readings in the log")


def each_once(got: list[str], expected: list[str], where: str) -> None:
    """Every expected id exactly once, and nothing else; the message counts and names what is wrong."""
    doubled = sorted(i for i, n in Counter(got).items() if n > 1)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    summary = (
        f"{where}: {len(got)} ids for {len(expected)} confirmed; "
        f"doubled {len(doubled)} {doubled[:5]}, missing {len(missing)} {missing[:5]}, extra {len(extra)} {extra[:5]}"
    )
    assert not doubled, summary
    assert not missing, summary
    assert not extra, summary


async def check_ledger(
    redis: Redis, keys: Keys, confirmed: list[str], sse: SseClient, *watch: Process, timeout: float = 30
) -> None:
    """Confirmed = stored in Redis (once each) = received over SSE (once each, in log order)."""
    total = len(confirmed)
    await logged_at_least(redis, keys, total, *watch, timeout=timeout)
    try:
        await wait_until(lambda: len(sse.events) >= total, timeout, f"{total} readings over SSE")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: got {len(sse.events)} in {sse.connects} connections") from None
    await asyncio.sleep(0.5)  # a late duplicate would show up now
    log = await stored_log(redis, keys)
    each_once([reading_id for _, reading_id in log], confirmed, "Redis")
    each_once(sse.ids, confirmed, "SSE")
    orders = [parse_log_id(log_id) for log_id, _ in sse.events]
    assert all(a < b for a, b in itertools.pairwise(orders)), "SSE ids are not strictly increasing"
    assert sse.events == log, "the SSE client did not receive the log, in log order"
