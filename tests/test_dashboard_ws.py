"""/ws against a real dashboard process, Redis and RabbitMQ: live, resume by id, restart, gap, access."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiormq
import pytest
from redis.asyncio import Redis

from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.broker import publish
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.readings import body
from tests.support.waiting import logged, wait_until
from tests.support.ws import frames, open_ws

Fill = Callable[..., Awaitable[None]]


@pytest.fixture(name="filled")
async def _filled(
    settings: Settings, redis: Redis, keys: Keys, amqp: aiormq.abc.AbstractChannel
) -> AsyncIterator[Fill]:
    """fill(bodies, user="user1"): published through a real collector and logged."""
    async with running_collector(settings):

        async def fill(bodies: list[bytes], user: str = "user1") -> None:
            before = await redis.xlen(keys.log(user))
            await publish(amqp, settings.queue, bodies)
            target = before + len(bodies)
            await wait_until(lambda: logged(redis, keys, target, (user,)), what=f"{target} logged")

        yield fill


async def log_ids(redis: Redis, keys: Keys, user: str = "user1") -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(keys.log(user))]


async def test_ws_delivers_new_readings_live_as_json_text_frames(filled: Fill, launch: Launcher) -> None:
    """A connected client gets each new reading once, in order: {"type": "reading", "id": log id, "reading"}."""
    dashboard = launch.dashboard("user1")
    async with open_ws(dashboard) as ws:
        await filled([body(id=f"live{i}") for i in range(20)])
        got = await frames(ws, 20)
    assert [f["reading"]["id"] for f in got] == [f"live{i}" for i in range(20)]
    assert [f["id"] for f in got] == [f["reading"]["log_id"] for f in got]
    assert set(got[0]) == {"type", "id", "reading"}
    assert set(got[0]["reading"]) == {
        "id",
        "user",
        "station",
        "address",
        "ts",
        "temperature",
        "pressure",
        "humidity",
        "log_id",
    }


async def test_ws_resumes_after_last_id_exactly_once_in_order_then_live(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """?last_id= replays every reading after it (over several pages), once, in log order, then live ones."""
    await filled([body(id=f"a{i}") for i in range(1500)])
    ids = await log_ids(redis, keys)
    dashboard = launch.dashboard("user1")
    async with open_ws(dashboard, ids[99]) as ws:
        replayed = await frames(ws, 1400)
        await filled([body(id=f"b{i}") for i in range(50)])
        live = await frames(ws, 50)
    got = replayed + live
    assert [f["reading"]["id"] for f in got] == [f"a{i}" for i in range(100, 1500)] + [f"b{i}" for i in range(50)]
    assert [f["id"] for f in got] == (await log_ids(redis, keys))[100:]
