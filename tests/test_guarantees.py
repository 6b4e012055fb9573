"""Nothing lost, nothing doubled, through faults.

Every test ends with the same ledger: the ids the broker confirmed to the generator (it exits 0
only when all N are confirmed) are exactly the ids stored in Redis, each once, and exactly the ids
a dashboard SSE client received, each once and in log order. The SSE client is connected before
the fault and behaves like a browser: when its stream drops it reconnects with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiormq
import pytest
import uvloop
from redis.asyncio import Redis

from sensorhub import broker, redis_client
from sensorhub.keys import Keys
from sensorhub.pipeline.collector import Collector, Tuning
from sensorhub.pipeline.generator import Generator
from sensorhub.pipeline.simulation import Simulation
from sensorhub.pipeline.store import Store
from sensorhub.settings import Settings
from tests.support.launch import Launcher
from tests.support.ledger import check_ledger, confirmed_ids, logged_at_least
from tests.support.processes import Dashboard, Process, alive
from tests.support.proxy import Proxy, reset
from tests.support.readings import body
from tests.support.services import RabbitNode, RedisServer, kill_clients
from tests.support.sse import SseClient
from tests.support.waiting import wait_until

USER = "user1"


@pytest.fixture(name="one_user")
def _one_user(settings: Settings) -> Settings:
    """The test's settings with one user, so one dashboard sees every reading."""
    return replace(settings, users=(USER,))


# --- the arrange block every fault test shares ---------------------------------------------------


@dataclass
class Flow:
    """Readings flowing for one user: a generator, a collector, and a dashboard with a browser-like SSE client."""

    redis: Redis
    keys: Keys
    dashboard: Dashboard
    sse: SseClient
    collector: Process
    generator: Process
    count: int
    seed: int

    async def logged_at_least(self, total: int) -> None:
        """Wait until `total` readings are logged, failing at once if the collector dies."""
        await logged_at_least(self.redis, self.keys, total, self.collector)

    async def check_ledger(self) -> None:
        """Once the broker confirmed all the generator's readings: confirmed = stored = streamed, once, in order."""
        confirmed = await confirmed_ids(self.generator, self.count, self.seed)
        await check_ledger(self.redis, self.keys, confirmed, self.sse, self.collector)


StartFlow = Callable[..., Awaitable[Flow]]


@pytest.fixture(name="start_flow")
def _start_flow(one_user: Settings, keys: Keys, redis: Redis, launch: Launcher) -> StartFlow:
    """start_flow(count=, rate=, seed=) -> a Flow, the SSE client connected before the first reading.

    Every part uses `settings` (one_user unless given), or its own: dashboard=, collector=, generator=;
    `redis` is the client the ledger reads with.
    """

    async def start(
        *,
        count: int,
        rate: int,
        seed: int,
        settings: Settings = one_user,
        dashboard: Settings | None = None,
        collector: Settings | None = None,
        generator: Settings | None = None,
        redis: Redis = redis,
    ) -> Flow:
        shown = await asyncio.to_thread(launch.dashboard, USER, settings=dashboard or settings)
        sse = await launch.sse(shown)
        collecting = launch.sensorhub("collect", settings=collector or settings)
        amount = ("--count", str(count), "--rate", str(rate), "--seed", str(seed))
        generating = launch.sensorhub("generate", *amount, settings=generator or settings)
        return Flow(redis, keys, shown, sse, collecting, generating, count, seed)

    return start


@pytest.fixture(name="own_redis")
async def _own_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's own redis-server."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


# --- 1. the collector killed ------------------------------------------------------------------


async def test_collector_killed_mid_batch_and_restarted_stores_and_streams_each_reading_once(
    start_flow: StartFlow,
) -> None:
    """SIGKILL of the collector twice while thousands flow: after restarts every confirmed reading is there once."""
    flow = await start_flow(count=8000, rate=2000, seed=1)
    for stored in (1500, 4500):
        await flow.logged_at_least(stored)
        flow.collector.kill()
        await asyncio.sleep(0.3)
        flow.collector.start()
    await flow.check_ledger()


# --- 2. the broker closes the collector's connection, and restarts --------------------------------


async def test_collector_comes_back_after_the_broker_closes_its_connection_and_restarts(
    one_user: Settings, start_flow: StartFlow, rabbit_node: RabbitNode
) -> None:
    """close_connection, then stop_app/start_app with generator and collector running: each reading once."""
    flow = await start_flow(count=6000, rate=1500, seed=2, settings=replace(one_user, amqp_url=rabbit_node.url))
    await flow.logged_at_least(1000)
    # Both of the collector's connections: the one it consumes on and the one it publishes on.
    assert await asyncio.to_thread(rabbit_node.close_connections, "sensorhub-collector") == 2
    await flow.logged_at_least(2500)
    await asyncio.to_thread(rabbit_node.stop_app)
    await asyncio.sleep(1)
    await asyncio.to_thread(rabbit_node.start_app)
    await flow.check_ledger()


# --- 3. Redis connections cut, Redis restarted, Redis paused ---------------------------------------

RedisFault = Callable[[Redis, RedisServer], Awaitable[None]]


async def _kill_clients_for_2_s(redis: Redis, server: RedisServer) -> None:
    """CLIENT KILL every sensorhub connection (collector and dashboard), again and again."""
    killed = 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        killed += await kill_clients(redis, "sensorhub-")
        await asyncio.sleep(0.1)
    assert killed >= 4


async def _restart(redis: Redis, server: RedisServer) -> None:
    """SIGTERM (a clean shutdown), a second down, started again."""
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(1)
    await asyncio.to_thread(server.start)


async def _crash_and_restart(redis: Redis, server: RedisServer) -> None:
    """SIGKILL (AOF, fsync always: what was written is on disk), a second down, started again."""
    await asyncio.to_thread(server.crash)
    await asyncio.sleep(1)
    await asyncio.to_thread(server.start)


async def _pause_writes_for_2_s(redis: Redis, server: RedisServer) -> None:
    await redis.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
    await asyncio.sleep(2.5)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(_kill_clients_for_2_s, id="client-kill"),
        pytest.param(_restart, id="restart"),
        pytest.param(_crash_and_restart, id="crash"),
        pytest.param(_pause_writes_for_2_s, id="pause"),
    ],
)
async def test_redis_faults_mid_stream_lose_and_double_nothing(
    one_user: Settings, start_flow: StartFlow, redis_server: RedisServer, own_redis: Redis, fault: RedisFault
) -> None:
    """Redis connections killed, Redis restarted (SIGTERM or SIGKILL; AOF always) or paused: each reading once."""
    own = replace(one_user, redis_url=redis_server.url)
    flow = await start_flow(count=6000, rate=1500, seed=3, settings=own, redis=own_redis)
    await flow.logged_at_least(1000)
    await fault(own_redis, redis_server)
    await flow.check_ledger()


# --- 4. half-open, slow and reset network paths ---------------------------------------------------


def _via(proxy: Proxy, settings: Settings, url: str) -> Settings:
    """The settings with that URL (amqp_url or redis_url) going through the proxy."""
    return replace(settings, **{url: proxy.url_for(getattr(settings, url))})


async def _silence_until_reconnected(
    proxies: Sequence[Proxy], *watch: Process, timeout: float, then_for: float = 0
) -> float:
    """Blackhole every path until each proxy has accepted a new connection, `then_for` s more, then pass again.

    The old connections stay dead for good: only a client's own timeout gets it out. Returns how
    long the reconnections took, in seconds.
    """
    accepted = [proxy.accepted for proxy in proxies]
    for proxy in proxies:
        proxy.set_mode("blackhole")
    started = time.monotonic()
    await wait_until(
        lambda: alive(*watch) and all(proxy.accepted > n for proxy, n in zip(proxies, accepted, strict=True)),
        timeout,
        "every client to give up its silent connection and reconnect",
    )
    silent_for = time.monotonic() - started
    await asyncio.sleep(then_for)
    for proxy in proxies:
        proxy.set_mode("pass")
    return silent_for


async def test_half_open_path_to_rabbitmq_is_noticed_by_heartbeats_and_nothing_is_lost(
    one_user: Settings, start_flow: StartFlow, launch: Launcher
) -> None:
    """RabbitMQ path silent (no FIN, no RST) past the heartbeat: generator and collector reconnect; each once."""
    to_collector, to_generator = launch.proxy(one_user.amqp_url), launch.proxy(one_user.amqp_url)
    flow = await start_flow(
        count=4000,
        rate=2000,
        seed=4,
        collector=_via(to_collector, one_user, "amqp_url"),
        generator=_via(to_generator, one_user, "amqp_url"),
    )
    await flow.logged_at_least(1000)
    silent_for = await _silence_until_reconnected(
        [to_collector, to_generator], flow.collector, flow.generator, timeout=45
    )
    await flow.check_ledger()
    assert silent_for > 20  # it was the heartbeat, not something else, that ended the old connections


async def test_half_open_path_to_redis_is_noticed_by_timeouts_and_nothing_is_lost(
    one_user: Settings, start_flow: StartFlow, launch: Launcher
) -> None:
    """Redis path silent past socket_timeout for collector and dashboard: both reconnect, each reading once."""
    to_collector, to_dashboard = launch.proxy(one_user.redis_url), launch.proxy(one_user.redis_url)
    flow = await start_flow(
        count=6000,
        rate=2000,
        seed=5,
        dashboard=_via(to_dashboard, one_user, "redis_url"),
        collector=_via(to_collector, one_user, "redis_url"),
    )
    await flow.logged_at_least(1000)
    await _silence_until_reconnected([to_collector, to_dashboard], flow.collector, timeout=25, then_for=1)
    await flow.check_ledger()


@pytest.mark.parametrize(
    ("url", "through"),
    [
        pytest.param("amqp_url", ("generator", "collector"), id="rabbitmq"),
        pytest.param("redis_url", ("collector", "dashboard"), id="redis"),
    ],
)
async def test_slow_then_reset_path_loses_and_doubles_nothing(
    one_user: Settings, start_flow: StartFlow, launch: Launcher, url: str, through: tuple[str, ...]
) -> None:
    """200 ms of latency, then every connection reset and refused for 1.5 s, then back: each reading once."""
    proxy = launch.proxy(getattr(one_user, url))
    via = _via(proxy, one_user, url)
    flow = await start_flow(count=6000, rate=2000, seed=6, **dict.fromkeys(through, via))
    await flow.logged_at_least(1000)
    proxy.set_mode("delay", delay_ms=200)
    await asyncio.sleep(1.5)
    proxy.set_mode("reset")
    await asyncio.sleep(1.5)
    proxy.set_mode("pass")
    await flow.check_ledger()


async def _reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that accepts and resets (RST) at once, as a restarting broker or a proxy without backend does."""
    reset(writer)


Component = Collector | Generator
BuildComponent = Callable[[Settings, str, contextlib.AsyncExitStack], Awaitable[Component]]


async def _collector_to_resetting_rabbitmq(
    settings: Settings, resetting: str, closing: contextlib.AsyncExitStack
) -> Component:
    redis = redis_client.connect(settings, "sensorhub-collector")
    closing.push_async_callback(redis.aclose)
    own = replace(settings, amqp_url=f"amqp://guest:guest@{resetting}/")
    return Collector(own, Store(redis, Keys(settings.namespace), 1), Tuning())


async def _collector_to_resetting_redis(
    settings: Settings, resetting: str, closing: contextlib.AsyncExitStack
) -> Component:
    own = replace(settings, redis_url=f"redis://{resetting}/0")
    redis = redis_client.connect(own, "sensorhub-collector")
    closing.push_async_callback(redis.aclose)
    connection = await aiormq.connect(settings.amqp_url)  # a reading to store, so that it must write to Redis
    channel = await connection.channel(publisher_confirms=True)
    await broker.declare(channel, settings)
    await channel.basic_publish(body(id="r1"), routing_key=settings.queue)
    await connection.close()
    return Collector(own, Store(redis, Keys(own.namespace), own.ttl_seconds), Tuning())


async def _generator_to_resetting_rabbitmq(
    settings: Settings, resetting: str, closing: contextlib.AsyncExitStack
) -> Component:
    own = replace(settings, amqp_url=f"amqp://guest:guest@{resetting}/")
    return Generator(own, Simulation((USER,), 1, 9), rate=0, count=1)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_collector_to_resetting_rabbitmq, id="collector-rabbitmq"),
        pytest.param(_collector_to_resetting_redis, id="collector-redis"),
        pytest.param(_generator_to_resetting_rabbitmq, id="generator-rabbitmq"),
    ],
)
def test_a_connection_reset_before_the_first_write_is_survived(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, build: BuildComponent
) -> None:
    """A server that resets a new connection before the client's first write is retried, on uvloop as in production."""
    real_open_connection = asyncio.open_connection

    async def open_connection_then_busy(*args: Any, **kwargs: Any) -> Any:
        streams = await real_open_connection(*args, **kwargs)
        await asyncio.sleep(0.05)  # the loop is busy for a moment: the RST is in before the first write
        return streams

    monkeypatch.setattr(asyncio, "open_connection", open_connection_then_busy)  # aiormq and redis-py use it

    async def scenario() -> tuple[str, BaseException | None]:
        server = await asyncio.start_server(_reset_at_once, "127.0.0.1", 0)
        async with server, contextlib.AsyncExitStack() as closing:
            component = await build(settings, f"127.0.0.1:{server.sockets[0].getsockname()[1]}", closing)
            task = asyncio.create_task(component.run())
            done, _ = await asyncio.wait({task}, timeout=2)
            component.stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
            return type(component).__name__, task.exception() if done and not task.cancelled() else None

    who, died_of = uvloop.run(scenario())
    assert died_of is None, f"{who} died instead of retrying: {died_of!r}"


# --- 5. the dashboard restarted ----------------------------------------------------------------


async def _terminate(dashboard: Dashboard) -> None:
    """SIGTERM: it must exit promptly, and with 0, even with an SSE client connected."""
    dashboard.send_signal(signal.SIGTERM)
    assert await dashboard.exit_code(timeout=5) == 0, dashboard.output[-3000:]


async def _kill(dashboard: Dashboard) -> None:
    await asyncio.to_thread(dashboard.kill)


@pytest.mark.parametrize("stop", [pytest.param(_terminate, id="terminate"), pytest.param(_kill, id="kill")])
async def test_sse_client_catches_up_once_in_order_after_the_dashboard_restarts(
    start_flow: StartFlow, stop: Callable[[Dashboard], Awaitable[None]]
) -> None:
    """Dashboard stopped (SIGTERM or SIGKILL) mid-stream, restarted on its port: the client gets each reading once."""
    flow = await start_flow(count=6000, rate=1500, seed=7)
    await flow.logged_at_least(1000)
    await stop(flow.dashboard)
    await asyncio.sleep(1.5)
    await asyncio.to_thread(flow.dashboard.start)
    await flow.check_ledger()
    assert flow.sse.connects >= 2


# --- 6. the generator through a broker restart ---------------------------------------------------


@pytest.mark.parametrize("stop", [pytest.param(RabbitNode.stop, id="stop"), pytest.param(RabbitNode.kill, id="crash")])
async def test_generator_republishes_what_was_unconfirmed_across_a_broker_restart(
    one_user: Settings, start_flow: StartFlow, rabbit_node: RabbitNode, stop: Callable[[RabbitNode], None]
) -> None:
    """The whole node stopped (or SIGKILLed) and started mid-stream: the generator republishes, each reading once."""
    flow = await start_flow(count=6000, rate=1500, seed=8, settings=replace(one_user, amqp_url=rabbit_node.url))
    await flow.logged_at_least(1500)
    await asyncio.to_thread(stop, rabbit_node)
    await asyncio.to_thread(rabbit_node.start)
    await flow.check_ledger()
