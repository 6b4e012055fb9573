"""Fixtures: real RabbitMQ and Redis, each test in its own queue and key namespace, cleaned up after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import aiormq
import pytest
from pamqp.commands import Basic
from redis.asyncio import Redis, RedisCluster

from sensorhub import redis_client
from sensorhub.keys import Keys
from sensorhub.pipeline.collector import Collector, Tuning
from sensorhub.pipeline.store import Store
from sensorhub.settings import Settings, load

BASE = load(os.environ)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(name="settings")
def _settings() -> Settings:
    """Settings for this test alone: its own queue, dead-letter queue and Redis namespace."""
    uid = uuid.uuid4().hex[:10]
    return replace(BASE, queue=f"test.{uid}", namespace=f"test-{uid}", ttl_seconds=3600)


@pytest.fixture(name="keys")
def _keys(settings: Settings) -> Keys:
    return Keys(settings.namespace)


@pytest.fixture(name="redis")
async def _redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
async def _clean_up(settings: Settings) -> AsyncIterator[None]:
    """After every test: its queues and its Redis keys are gone, whatever it did."""
    yield
    connection = await aiormq.connect(settings.amqp_url)
    channel = await connection.channel()
    for queue in (settings.queue, settings.dlq):
        await channel.queue_delete(queue)
    await connection.close()
    client = Redis.from_url(settings.redis_url)
    async for key in client.scan_iter(match=f"{settings.namespace}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture(name="amqp")
async def _amqp(settings: Settings) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A confirm-mode channel with the test's queues declared."""
    from sensorhub import broker

    connection = await aiormq.connect(settings.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await broker.declare(channel, settings)
    yield channel
    await connection.close()


async def publish(channel: aiormq.abc.AbstractChannel, queue: str, bodies: Sequence[bytes]) -> None:
    confirmations = await asyncio.gather(
        *(
            channel.basic_publish(body, routing_key=queue, properties=Basic.Properties(delivery_mode=2))
            for body in bodies
        )
    )
    assert all(isinstance(c, Basic.Ack) for c in confirmations)


async def queue_counts(channel: aiormq.abc.AbstractChannel, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue."""
    declared = await channel.queue_declare(queue, passive=True)
    return int(declared.message_count or 0), int(declared.consumer_count or 0)


@contextlib.asynccontextmanager
async def running_collector(settings: Settings, tuning: Tuning | None = None) -> AsyncIterator[Collector]:
    """A collector consuming in this process, stopped gracefully on exit."""
    client = redis_client.connect(settings, "sensorhub-collector")
    collector = Collector(settings, Store(client, Keys(settings.namespace), settings.ttl_seconds), tuning or Tuning())
    task = asyncio.create_task(collector.run())
    try:
        await wait_until(lambda: collector.rabbitmq_connected, what="collector consuming")
        yield collector
    finally:
        collector.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def logged(redis: Redis | RedisCluster, keys: Keys, n: int, users: Sequence[str] = ("user1",)) -> bool:
    """True once the users' logs hold n entries in all (for wait_until)."""
    return sum([int(await redis.xlen(keys.log(user))) for user in users]) == n


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "SENSORHUB_AMQP_URL": settings.amqp_url,
        "SENSORHUB_REDIS_URL": settings.redis_url,
        "SENSORHUB_QUEUE": settings.queue,
        "SENSORHUB_NAMESPACE": settings.namespace,
        "SENSORHUB_TTL_SECONDS": str(settings.ttl_seconds),
        "SENSORHUB_USERS": ",".join(settings.users),
        "SENSORHUB_QUEUE_TYPE": settings.queue_type,
        "SENSORHUB_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
    }


def sensorhub(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen[str]:
    """Start `sensorhub ARGS` as a real process, as a user would."""
    return subprocess.Popen(
        [sys.executable, "-m", "sensorhub", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.fixture(name="processes")
def _processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.fixture(name="redis_server")
def _redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (AOF, fsync always), which the test may stop and restart."""
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


class RedisServer:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Dashboard:
    """A real `sensorhub dashboard` process on a free port."""

    def __init__(self, settings: Settings, user: str, token: str, port: int | None = None) -> None:
        self.settings = settings
        self.user = user
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> Dashboard:
        self.process = sensorhub(
            "dashboard",
            "--user",
            self.user,
            "--port",
            str(self.port),
            "--token",
            self.token,
            env=settings_env(self.settings),
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dashboard did not start: {self.process.communicate()[0]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(name="dashboards")
def _dashboards(settings: Settings) -> Iterator[Callable[..., Dashboard]]:
    """Start dashboards for this test's namespace: dashboards("user1") -> a running Dashboard."""
    started: list[Dashboard] = []

    def start(user: str, token: str | None = None, port: int | None = None) -> Dashboard:
        dashboard = Dashboard(settings, user, token or f"token-of-{user}-{uuid.uuid4().hex[:8]}", port).start()
        started.append(dashboard)
        return dashboard

    yield start
    for dashboard in started:
        dashboard.stop()
