"""Fixtures: real RabbitMQ and Redis, each test in its own queue and key namespace, cleaned up after.

Only tests that ask for `settings` (or a fixture built on it) touch the services: the unit tests
run without RabbitMQ and Redis.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiormq
import pytest
from playwright.async_api import Browser
from redis.asyncio import Redis

from sensorhub import broker
from sensorhub.keys import Keys
from sensorhub.settings import Settings, load
from sensorhub.tools.station_accounts import Accounts
from tests.support.broker import publish
from tests.support.browser import Pages, chromium
from tests.support.collector import Fill, running_collector
from tests.support.launch import Launcher
from tests.support.services import RabbitNode, RedisServer, wait_for_port
from tests.support.waiting import logged, wait_until

BASE = load(os.environ)


@pytest.fixture(name="settings")
async def _settings() -> AsyncIterator[Settings]:
    """Settings for this test alone: its own queue, dead-letter queue and Redis namespace, all gone after it."""
    uid = uuid.uuid4().hex[:10]
    settings = replace(BASE, queue=f"test.{uid}", namespace=f"test-{uid}", ttl_seconds=3600)
    yield settings
    await _clean_up(settings)


async def _clean_up(settings: Settings) -> None:
    """The test's queues and its Redis keys are gone, whatever it did."""
    connection = await aiormq.connect(settings.amqp_url)
    channel = await connection.channel()
    for queue in (settings.queue, settings.dlq):
        await channel.queue_delete(queue)
    await connection.close()
    client = Redis.from_url(settings.redis_url)
    async for key in client.scan_iter(match=f"{settings.namespace}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture(name="keys")
def _keys(settings: Settings) -> Keys:
    return Keys(settings.namespace)


@pytest.fixture(name="redis")
async def _redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(name="amqp")
async def _amqp(settings: Settings) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A confirm-mode channel with the test's queues declared."""
    connection = await aiormq.connect(settings.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await broker.declare(channel, settings)
    yield channel
    await connection.close()


@pytest.fixture(name="launch")
async def _launch(settings: Settings) -> AsyncIterator[Launcher]:
    """Start sensorhub processes, dashboards, proxies and SSE clients; all of them ended after the test."""
    launcher = Launcher(settings)
    yield launcher
    await launcher.aclose()


@pytest.fixture(name="redis_server")
def _redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (AOF, fsync always), which the test may stop and restart."""
    server = RedisServer.durable(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="_rabbit_node_of_module", scope="module")
def _rabbit_node_of_module() -> Iterator[RabbitNode]:
    node = RabbitNode()
    node.boot_seconds = node.start()
    yield node
    node.close()


@pytest.fixture(name="rabbit_node")
def _rabbit_node(_rabbit_node_of_module: RabbitNode) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this module's own (booted once, ~3 s), running again after each test."""
    yield _rabbit_node_of_module
    _rabbit_node_of_module.ensure_running()


@pytest.fixture(name="_mqtt_node_of_module", scope="module")
def _mqtt_node_of_module() -> Iterator[RabbitNode]:
    node = RabbitNode(mqtt=True)
    node.boot_seconds = node.start()
    wait_for_port(node.mqtt_port, 30)
    wait_for_port(node.api_port, 30)
    yield node
    node.close()


@pytest.fixture(name="mqtt_node")
def _mqtt_node(_mqtt_node_of_module: RabbitNode) -> RabbitNode:
    """The RabbitMQ node with the MQTT plugin that `mqtt_settings` point at (booted once per module)."""
    return _mqtt_node_of_module


@pytest.fixture(name="mqtt_settings")
async def _mqtt_settings(
    settings: Settings, _mqtt_node_of_module: RabbitNode, redis_server: RedisServer
) -> AsyncIterator[Settings]:
    """The test's settings on a RabbitMQ node of this module's own with the MQTT plugin and the
    management API, and a Redis of the test's own: so without a namespace (the topics are
    `sensors/<user>/<station>` as stations use them) and the system services left alone. Its queues
    and station accounts are gone after."""
    node = _mqtt_node_of_module
    on_node = replace(
        settings,
        amqp_url=node.url,
        rabbitmq_api_url=node.api_url,
        mqtt_port=node.mqtt_port,
        redis_url=redis_server.url,
        namespace="",
    )
    yield on_node
    connection = await aiormq.connect(on_node.amqp_url)
    channel = await connection.channel()
    for queue in (on_node.queue, on_node.dlq):
        await channel.queue_delete(queue)
    await connection.close()
    async with Accounts(on_node) as accounts:
        for account in await accounts.list():
            await accounts.remove(account.user, account.station)


@pytest.fixture(name="mqtt_redis")
async def _mqtt_redis(mqtt_settings: Settings) -> AsyncIterator[Redis]:
    """A client of the Redis of `mqtt_settings`."""
    client = Redis.from_url(mqtt_settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(name="browser")
async def _browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium (never a downloaded one), closed after the test."""
    async with chromium() as browser:
        yield browser


@pytest.fixture(name="pages")
def _pages(browser: Browser) -> Pages:
    return Pages(browser)


@pytest.fixture(name="collector")
async def _collector(settings: Settings) -> AsyncIterator[None]:
    """A collector in this process, storing what the test publishes."""
    async with running_collector(settings):
        yield


@pytest.fixture(name="filled")
async def _filled(
    settings: Settings, redis: Redis, keys: Keys, amqp: aiormq.abc.AbstractChannel
) -> AsyncIterator[Fill]:
    """fill(bodies, user="user1", expected=len(bodies)): published through a real collector and logged."""
    async with running_collector(settings):

        async def fill(bodies: list[bytes], user: str = "user1", expected: int | None = None) -> None:
            before = await redis.xlen(keys.log(user))
            await publish(amqp, settings.queue, bodies)
            target = before + (expected if expected is not None else len(bodies))
            await wait_until(lambda: logged(redis, keys, target, (user,)), what=f"{target} logged")

        yield fill
