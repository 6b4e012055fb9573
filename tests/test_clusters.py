"""Node failures under load in real clusters: RabbitMQ (3 nodes, quorum queue), Redis Cluster (3 masters + 3 replicas).

Each fault test ends with the ledger of test_guarantees: every reading the broker confirmed to the
generator is stored once and streamed once to a browser-like SSE client, in log order. The cluster
tests are marked `cluster` (a cluster boots in 20-30 s): `make test` leaves them out, `.ci/run` runs them.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiormq
import pytest
from redis.asyncio import Redis, RedisCluster

from sensorhub import broker
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.broker import publish, rabbitmqctl
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.ledger import check_ledger, confirmed_ids, each_once, generated_ids, logged_at_least, stored_ids
from tests.support.processes import Process, alive, run
from tests.support.readings import body
from tests.support.services import (
    RabbitNode,
    RedisServer,
    cluster_ok,
    free_port,
    linked,
    rabbit_cluster,
    redis_cluster_servers,
)
from tests.support.sse import SseClient
from tests.support.waiting import logged, wait_until

USER = "user1"


# --- SENSORHUB_AMQP_URL as a list (no cluster needed) --------------------------------------------


async def test_connect_takes_the_first_node_of_the_list_that_answers(settings: Settings) -> None:
    """A dead node first in the list is skipped; with every node dead the error names each one, no password."""
    dead = [f"amqp://guest:secret@127.0.0.1:{free_port()}/" for _ in range(2)]
    connection = await broker.connect(replace(settings, amqp_url=f"{dead[0]},{settings.amqp_url}"), "test-list")
    assert connection.url.port == aiormq.connection.URL(settings.amqp_url).port
    await connection.close()
    with pytest.raises(aiormq.AMQPConnectionError) as error:
        await broker.connect(replace(settings, amqp_url=",".join(dead)), "test-list")
    message = str(error.value)
    assert message.startswith("no RabbitMQ node answered")
    for url in dead:
        assert aiormq.connection.URL(url).host + f":{aiormq.connection.URL(url).port}" in message
    assert "secret" not in message


def test_doctor_given_only_dead_nodes_fails_naming_each_without_password(settings: Settings) -> None:
    """`sensorhub doctor` with every listed node down: a FAIL line naming each node, exit 1, no traceback."""
    dead = ",".join(f"amqp://guest:secret@127.0.0.1:{free_port()}/" for _ in range(2))
    done = run("doctor", settings=replace(settings, amqp_url=dead), timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    fail = next(line for line in done.stdout.splitlines() if line.startswith("[FAIL] RabbitMQ:"))
    assert "no RabbitMQ node answered" in fail
    assert fail.count("127.0.0.1:") >= 4  # each node in the URL list and in the reason
    assert "Traceback" not in done.stdout + done.stderr
    assert "secret" not in done.stdout + done.stderr


# --- SENSORHUB_REDIS_MIN_REPLICAS on a plain server with a replica (no cluster needed) -------------


async def test_min_replicas_holds_the_ack_while_the_replica_is_down_and_stores_each_reading_once(
    settings: Settings, keys: Keys, amqp: aiormq.abc.AbstractChannel, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A master with one replica, SENSORHUB_REDIS_MIN_REPLICAS=1: replica down, the collector stores but
    acknowledges nothing (the readings stay in RabbitMQ); replica back, all acknowledged, each stored once."""
    replica = RedisServer(
        tmp_path / "replica", free_port(), "--replicaof", "127.0.0.1", str(redis_server.port), "--save", ""
    )
    replica.start()
    try:
        await wait_until(lambda: linked(replica.port), 20, "replica in sync")
        own = replace(settings, redis_url=redis_server.url, redis_min_replicas=1)
        master = Redis.from_url(redis_server.url)
        async with running_collector(own):
            await publish(amqp, settings.queue, [body(id=f"before{i}") for i in range(10)])
            await wait_until(lambda: logged(master, keys, 10), what="10 logged")
            await wait_until(lambda: _unacked(settings.queue, 0), 20, "all 10 acknowledged")
            replica.stop()
            await publish(amqp, settings.queue, [body(id=f"during{i}") for i in range(20)])
            await wait_until(lambda: _logged_more_than(master, keys, 10), what="a batch stored on the master")
            await asyncio.sleep(2)  # two WAITs of 1 s: still nothing acknowledged
            assert await _unacked(settings.queue, 20), "stored on the master, not acknowledged without a replica"
            replica.start()
            await wait_until(lambda: _unacked(settings.queue, 0), 30, "all acknowledged once the replica is back")
            assert await logged(master, keys, 30)
        ids = await stored_ids(master, keys)
        assert sorted(ids) == sorted([f"before{i}" for i in range(10)] + [f"during{i}" for i in range(20)])
        replica_client = Redis.from_url(replica.url)
        await wait_until(lambda: replica_client.xlen(keys.log(USER)), what="the replica has the log")
        assert await replica_client.xlen(keys.log(USER)) == 30
        await replica_client.aclose()
        await master.aclose()
    finally:
        replica.stop()


async def _logged_more_than(redis: Redis, keys: Keys, n: int) -> bool:
    return int(await redis.xlen(keys.log(USER))) > n


async def _unacked(queue: str, n: int) -> bool:
    """True when exactly n messages of the queue are delivered and not acknowledged."""
    listing = await asyncio.to_thread(
        rabbitmqctl, "list_queues", "name", "messages_unacknowledged", "--no-table-headers"
    )
    return any(line.split("\t") == [queue, str(n)] for line in listing.splitlines())


# --- 2. RabbitMQ: the node hosting the quorum queue's leader dies ------------------------------


@pytest.fixture(name="rabbit_nodes", scope="module")
def _rabbit_nodes() -> Iterator[list[RabbitNode]]:
    with rabbit_cluster(3) as nodes:
        yield nodes


def _leader(node: RabbitNode, queue: str) -> str:
    listing = node.ctl("list_queues", "name", "leader", "--no-table-headers", timeout=30)
    for line in listing.splitlines():
        name, _, leader = line.partition("\t")
        if name == queue:
            return leader.strip()
    raise AssertionError(f"queue {queue} not listed on {node.name}: {listing}")


@dataclass
class Flow:
    """Readings flowing for one user: generator, collector, and a dashboard with a browser-like SSE client."""

    collector: Process
    generator: Process
    sse: SseClient
    count: int
    seed: int


async def _start_flow(launch: Launcher, settings: Settings, *, count: int, rate: int, seed: int) -> Flow:
    dashboard = await asyncio.to_thread(launch.dashboard, USER, settings=settings)
    sse = await launch.sse(dashboard)
    collector = launch.sensorhub("collect", "--http-port", str(free_port()), settings=settings)
    amount = ("--count", str(count), "--rate", str(rate), "--seed", str(seed))
    generator = launch.sensorhub("generate", *amount, settings=settings)
    return Flow(collector, generator, sse, count, seed)


@pytest.mark.cluster
@pytest.mark.timeout(300)
async def test_rabbitmq_node_hosting_the_quorum_leader_is_killed_under_load_and_nothing_is_lost(
    settings: Settings, keys: Keys, redis: Redis, launch: Launcher, rabbit_nodes: list[RabbitNode]
) -> None:
    """SIGKILL of the node every process is connected to, which hosts the queue's leader: the generator
    and collector move to the other nodes, a new leader is elected, and the ledger is exact."""
    first, *others = rabbit_nodes
    on_cluster = replace(
        settings, users=(USER,), queue_type="quorum", amqp_url=",".join(node.url for node in rabbit_nodes)
    )
    connection = await broker.connect(on_cluster, "test-declare")  # on the first node, like every process
    await broker.declare(await connection.channel(), on_cluster)
    await connection.close()
    listing = await asyncio.to_thread(first.ctl, "list_queues", "name", "leader", "members", "--no-table-headers")
    line = next(line.split("\t") for line in listing.splitlines() if line.startswith(on_cluster.queue + "\t"))
    assert line[1] == first.name, f"the queue's leader is on the node it was declared on: {line}"
    assert all(node.name in line[2] for node in rabbit_nodes), f"the quorum queue has a member on each node: {line}"

    flow = await _start_flow(launch, on_cluster, count=30000, rate=1000, seed=21)
    await logged_at_least(redis, keys, 300, flow.collector, timeout=60)
    alive(flow.generator)  # still publishing: the node dies under load
    await asyncio.to_thread(first.kill)
    stored_before = len(await stored_ids(redis, keys))

    new_leader = await wait_until(
        lambda: asyncio.to_thread(_leader_other_than, others[0], on_cluster.queue, first.name), 60, "a new leader"
    )
    assert new_leader in (node.name for node in others)
    await logged_at_least(redis, keys, stored_before + 1000, flow.collector, timeout=60)
    alive(flow.generator)  # what was stored since came through the other nodes, while the generator still ran
    confirmed = await confirmed_ids(flow.generator, flow.count, flow.seed, timeout=120)
    await check_ledger(redis, keys, confirmed, flow.sse, flow.collector, timeout=60)
    assert "reconnecting" in flow.collector.output, "the collector lost its node and reconnected"
    assert flow.collector.output.count("consuming") >= 2, "the collector consumed again, from another node"
    assert "publishing them again" in flow.generator.output, "the generator republished what was in flight"


def _leader_other_than(node: RabbitNode, queue: str, dead: str) -> str | None:
    """The queue's leader as `node` sees it, once it is not `dead` (None until then)."""
    try:
        leader = _leader(node, queue)
    except (RuntimeError, AssertionError, subprocess.TimeoutExpired):
        return None
    return leader if leader and leader != dead else None


# --- 3. Redis Cluster with replicas: a master dies ----------------------------------------------


@pytest.fixture(name="cluster_servers")
def _cluster_servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """3 masters + 3 replicas of this test's own (a master killed by a test is not worth repairing)."""
    with redis_cluster_servers(tmp_path / "cluster", masters=3, replicas=1) as servers:
        yield servers


@pytest.fixture(name="cluster_client")
async def _cluster_client(cluster_servers: list[RedisServer]) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_servers[0].url)
    await client.initialize()
    yield client
    await client.aclose()


def _url_away_from_users_master(servers: list[RedisServer], client: RedisCluster, keys: Keys) -> str:
    """The URL of a master other than the one the test kills: a client (re)starting needs its URL's node up."""
    doomed = _server_of(servers, client, keys.log(USER))
    node_ports = {int(node.port) for node in client.get_primaries()}
    return next(s.url for s in servers if s is not doomed and s.port in node_ports)


def _server_of(servers: list[RedisServer], client: RedisCluster, key: str) -> RedisServer:
    node = client.get_node_from_key(key)
    assert node is not None
    return next(server for server in servers if server.port == int(node.port))


async def _kill_users_master(
    servers: list[RedisServer], client: RedisCluster, keys: Keys
) -> tuple[RedisServer, RedisServer]:
    """SIGKILL the master of the user's slot; wait until one of its replicas serves the slot. (old, new)"""
    master = _server_of(servers, client, keys.log(USER))
    await asyncio.to_thread(master.crash)
    survivor = next(server for server in servers if server is not master)

    async def promoted() -> RedisServer | None:
        nodes = await asyncio.to_thread(_cluster_nodes, survivor.port)
        slot = client.keyslot(keys.log(USER))
        for fields in nodes:
            serving = "master" in fields[2] and "fail" not in fields[2] and _serves(fields[8:], slot)
            if serving and not fields[1].startswith(f"127.0.0.1:{master.port}@"):
                return next(server for server in servers if fields[1].startswith(f"127.0.0.1:{server.port}@"))
        return None

    new = await wait_until(promoted, 60, "a replica promoted in place of the killed master")
    assert new is not master
    return master, new


def _cluster_nodes(port: int) -> list[list[str]]:
    command = ["redis-cli", "-p", str(port), "cluster", "nodes"]
    listing = subprocess.run(command, capture_output=True, text=True, check=False)
    return [line.split() for line in listing.stdout.splitlines()]


def _serves(ranges: list[str], slot: int) -> bool:
    for item in ranges:
        low, _, high = item.partition("-")
        if low.isdigit() and int(low) <= slot <= int(high or low):
            return True
    return False


@pytest.mark.cluster
@pytest.mark.timeout(300)
async def test_redis_master_killed_under_load_with_min_replicas_1_loses_nothing(
    settings: Settings, launch: Launcher, cluster_servers: list[RedisServer], cluster_client: RedisCluster
) -> None:
    """SENSORHUB_REDIS_MIN_REPLICAS=1: a master SIGKILLed under load; its replica takes over. The collector
    holds batches no replica has (the new master has none until the old one rejoins as its replica),
    then the ledger is exact and the dashboard streams on from the new master."""
    keys = Keys(settings.namespace)
    on_cluster = replace(
        settings,
        users=(USER,),
        redis_url=_url_away_from_users_master(cluster_servers, cluster_client, keys),
        redis_cluster=True,
        redis_min_replicas=1,
    )
    flow = await _start_flow(launch, on_cluster, count=6000, rate=1000, seed=31)
    await logged_at_least(cluster_client, keys, 1500, flow.collector, flow.generator, timeout=60)

    old, new = await _kill_users_master(cluster_servers, cluster_client, keys)
    # The promoted replica has no replica of its own: nothing is acknowledged meanwhile.
    await wait_until(lambda: "of 1 Redis replicas have the batch" in flow.collector.output, 30, "WAIT falling short")
    await asyncio.sleep(2)
    held = await _unacked_or_ready(settings)
    assert held >= 1000, f"the collector should hold the readings no replica has, {held} in the queue"
    await asyncio.to_thread(old.start)  # it rejoins as the new master's replica
    await wait_until(lambda: asyncio.to_thread(cluster_ok, new.port, len(cluster_servers)), 60, "cluster healed")

    confirmed = await confirmed_ids(flow.generator, flow.count, flow.seed, timeout=120)
    await check_ledger(cluster_client, keys, confirmed, flow.sse, flow.collector, timeout=90)
    assert flow.sse.connects >= 1


async def _unacked_or_ready(settings: Settings) -> int:
    """Readings in the queue, ready or delivered but not acknowledged."""
    out = await asyncio.to_thread(rabbitmqctl, "list_queues", "name", "messages", "--no-table-headers")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == settings.queue:
            return int(count)
    return 0


@pytest.mark.cluster
@pytest.mark.timeout(300)
async def test_redis_master_killed_under_load_with_min_replicas_0_measures_what_is_lost(
    settings: Settings,
    launch: Launcher,
    cluster_servers: list[RedisServer],
    cluster_client: RedisCluster,
    record_property: pytest.RecordProperty,
) -> None:
    """SENSORHUB_REDIS_MIN_REPLICAS=0 (the default): the flow carries on through the failover without waiting
    for the killed master; what the master had acknowledged but not yet replicated is gone. The test
    counts it (printed, and a junit property), and checks that nothing is doubled or invented."""
    keys = Keys(settings.namespace)
    url = _url_away_from_users_master(cluster_servers, cluster_client, keys)
    on_cluster = replace(settings, users=(USER,), redis_url=url, redis_cluster=True)
    flow = await _start_flow(launch, on_cluster, count=6000, rate=1000, seed=32)
    await logged_at_least(cluster_client, keys, 1500, flow.collector, flow.generator, timeout=60)
    await _kill_users_master(cluster_servers, cluster_client, keys)
    # No restart of the killed master: the new one carries on alone.
    confirmed = await confirmed_ids(flow.generator, flow.count, flow.seed, timeout=120)
    last = confirmed[-1]
    await wait_until(lambda: _has(cluster_client, keys, last), 60, "the last reading stored on the new master")
    alive(flow.collector)
    stored = await stored_ids(cluster_client, keys)
    assert set(stored) <= set(confirmed), "Redis holds a reading nobody confirmed"
    each_once(stored, [i for i in confirmed if i in set(stored)], "Redis")  # none doubled
    lost = sorted(set(confirmed) - set(stored))
    streamed_lost = [i for i in flow.sse.ids if i in set(lost)]
    print(f"min_replicas=0: lost {len(lost)} of {len(confirmed)} confirmed readings in the failover {lost[:10]}")
    print(f"of them streamed to the dashboard before the master died: {len(streamed_lost)}")
    record_property("lost_readings", len(lost))
    await wait_until(lambda: set(stored) <= set(flow.sse.ids), 60, "the dashboard streaming every stored reading")
    assert len(lost) < 1000, "more lost than the readings of the last second before the kill"
    assert len(set(flow.sse.ids)) == len(flow.sse.ids), "a reading was streamed twice"


async def _has(client: RedisCluster, keys: Keys, reading_id: str) -> bool:
    return reading_id in set(await stored_ids(client, keys))


# --- doctor ---------------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_doctor_reports_the_redis_clusters_shape(settings: Settings, cluster_servers: list[RedisServer]) -> None:
    """`sensorhub doctor` on a Redis Cluster: masters, replicas per master, slots covered; a failed master shows."""
    on_cluster = replace(settings, redis_url=cluster_servers[0].url, redis_cluster=True)
    done = run("doctor", settings=on_cluster)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if "Redis Cluster" in line)
    assert line == "[ok  ] Redis Cluster: 3 masters, 3 replicas, 16384/16384 slots served"
    masters = [line for line in done.stdout.splitlines() if "Redis master" in line]
    assert len(masters) == 3
    assert all(line.startswith("[ok  ]") and "replicas: 127.0.0.1:" in line for line in masters)
    for server in cluster_servers:
        assert f"127.0.0.1:{server.port}" in done.stdout

    cluster_servers[0].crash()  # a master: seen as failed, then its replica takes its slots
    on_cluster = replace(on_cluster, redis_url=cluster_servers[1].url)
    wait = 0.0
    while "failed: 127.0.0.1:" not in (done := run("doctor", settings=on_cluster)).stdout:
        assert wait < 30, done.stdout + done.stderr
        time.sleep(0.5)
        wait += 0.5
    line = next(line for line in done.stdout.splitlines() if "Redis Cluster" in line)
    assert f"failed: 127.0.0.1:{cluster_servers[0].port}" in line


def test_doctor_lists_each_rabbitmq_node_of_the_url_list(settings: Settings) -> None:
    """With SENSORHUB_AMQP_URL listing nodes: one line per node (answering or not), no password, exit 0
    while one answers."""
    dead = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    done = run("doctor", settings=replace(settings, amqp_url=f"{dead},{settings.amqp_url}"))
    assert done.returncode == 0, done.stdout + done.stderr
    nodes = [line for line in done.stdout.splitlines() if "RabbitMQ node" in line]
    assert len(nodes) == 2
    assert nodes[0].startswith("[warn] RabbitMQ node: amqp://guest:***@127.0.0.1:")
    assert "not reachable" in nodes[0]
    assert nodes[1].startswith("[ok  ] RabbitMQ node: ")
    assert "answers" in nodes[1]
    assert "secret" not in done.stdout


# --- the watchdogs for a session the broker stopped answering -------------------------------------
# Seen on RabbitMQ 3.10 when a process reconnects while a quorum queue elects its leader; driven
# here with stand-ins for the broker, since no command makes a real broker do it on demand.


async def test_generator_gives_up_a_session_without_confirms_and_publishes_its_readings_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No confirm for CONFIRM_TIMEOUT with readings in flight: the session ends (_Stalled) and every
    reading in flight is back in the retry queue, to be published again on the next connection."""
    from sensorhub.pipeline import generator as generator_module
    from sensorhub.pipeline.simulation import Simulation

    async def silent_channel(connection: aiormq.abc.AbstractConnection, *_args: object, **_kwargs: object) -> object:
        """A real confirm-mode channel whose frames never leave: the broker never answers them."""
        channel = await connection.channel(publisher_confirms=True)
        channel.write_queue = asyncio.Queue()  # type: ignore[attr-defined]  # nobody reads it
        return channel

    monkeypatch.setattr(generator_module, "CONFIRM_TIMEOUT", 0.3)
    monkeypatch.setattr(generator_module.broker, "open_channel", silent_channel)
    generator = generator_module.Generator(settings, iter(Simulation(("user1",), 1, seed=1)), rate=0, count=50)
    connection = await broker.connect(settings, "test-silent")
    ended = await asyncio.wait_for(generator._session(connection), 30)
    assert isinstance(ended, generator_module._Stalled), ended
    assert sorted(r.id for r in generator._retry) == sorted(generated_ids(50, seed=1))  # each once
    assert generator.confirmed == 0


class _Declared:
    def __init__(self, ready: int) -> None:
        self.message_count = ready


class _DepthChannel:
    def __init__(self, ready: int) -> None:
        self.ready = ready

    async def queue_declare(self, _queue: str, passive: bool = False) -> _Declared:
        return _Declared(self.ready)


class _DepthConnection:
    def __init__(self, ready: int) -> None:
        self.ready = ready

    async def channel(self) -> _DepthChannel:
        return _DepthChannel(self.ready)


@pytest.mark.parametrize(("ready", "idle", "stalls"), [(5, True, True), (0, True, False), (5, False, False)])
async def test_collector_gives_up_a_session_whose_consumer_gets_nothing_while_messages_wait(
    monkeypatch: pytest.MonkeyPatch, ready: int, idle: bool, stalls: bool
) -> None:
    """Messages ready at two checks, the worker idle and nothing delivered between: the session ends.
    Not when the queue is empty, nor when the worker is busy (say, holding a batch while Redis is down)."""
    from sensorhub.pipeline import collector as collector_module

    monkeypatch.setattr(collector_module, "DEPTH_INTERVAL", 0.05)
    collector = collector_module.Collector(Settings(), store=None)
    consumer = collector_module._Consumer(None, None, None)
    consumer.inbox.idle = idle
    watch = collector._watch_depth(_DepthConnection(ready), consumer)
    if stalls:
        with pytest.raises(collector_module._SessionEnded, match="5 messages ready but none delivered"):
            await asyncio.wait_for(watch, 5)
    else:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watch, 0.5)
