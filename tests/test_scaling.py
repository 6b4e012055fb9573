"""Scale-out on real engines: a Redis Cluster, RabbitMQ quorum queues, dashboard replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace

import aiormq
import httpx
import pytest
from redis.asyncio import Redis, RedisCluster

from sensorhub import broker
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.broker import publish, queue_counts, rabbitmqctl
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.readings import body
from tests.support.services import free_port, redis_cluster
from tests.support.sse import read_events, streams_to
from tests.support.waiting import logged, wait_until


@pytest.fixture(name="cluster_url", scope="module")
def _cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on free local ports, made with redis-cli --cluster create."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


async def test_pipeline_and_dashboard_work_on_a_redis_cluster(
    settings: Settings,
    amqp: aiormq.abc.AbstractChannel,
    cluster_url: str,
    launch: Launcher,
) -> None:
    """Collector and dashboard against a 3-master cluster: each user's keys share a slot, SSE is live."""
    on_cluster = replace(settings, redis_url=cluster_url, redis_cluster=True)
    keys = Keys(settings.namespace)
    users = [f"user{n}" for n in range(1, 7)]
    launch.sensorhub("collect", "--http-port", str(free_port()), settings=on_cluster)
    dashboard = launch.dashboard("user1", settings=on_cluster, token="cluster-token")
    reader = asyncio.create_task(read_events(dashboard, 50))
    await wait_until(lambda: streams_to(dashboard, 1), what="the stream to open")
    await publish(amqp, settings.queue, [body(id=f"k{i}", user=users[i % 6]) for i in range(300)])
    events = await reader
    assert [json.loads(e.data)["id"] for e in events] == [f"k{i}" for i in range(0, 300, 6)]

    cluster = RedisCluster.from_url(cluster_url)
    try:
        await wait_until(lambda: logged(cluster, keys, 300, users), timeout=20)
        nodes = {cluster.get_node_from_key(keys.log(u)).name for u in users}
        assert len(nodes) > 1, "the users should spread over several masters"
        for user in users:
            slot = cluster.keyslot(keys.log(user))
            assert cluster.keyslot(keys.notify(user)) == slot
            for _, fields in await cluster.xrange(keys.log(user), count=5):
                assert cluster.keyslot(fields[b"key"]) == slot
        async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
            readings = (await client.get("/api/readings", params={"limit": 5000})).json()["readings"]
        assert [r["id"] for r in readings] == [f"k{i}" for i in range(0, 300, 6)]
    finally:
        for user in users:
            for key in [keys.log(user)] + [f[b"key"] for _, f in await cluster.xrange(keys.log(user))]:
                await cluster.delete(key)
        await cluster.aclose()


@pytest.fixture(name="quorum")
def _quorum(settings: Settings) -> Settings:
    return replace(settings, queue_type="quorum")


async def test_quorum_queue_carries_the_pipeline(
    quorum: Settings,
    keys: Keys,
    redis: Redis,
    launch: Launcher,
) -> None:
    """SENSORHUB_QUEUE_TYPE=quorum: the generator and collector declare and use a quorum queue."""
    launch.sensorhub("collect", "--http-port", str(free_port()), settings=quorum)
    generator = launch.sensorhub("generate", "--count", "500", "--rate", "0", settings=quorum)
    assert await generator.exit_code(60) == 0
    await wait_until(lambda: logged(redis, keys, 500, ("user1", "user2")), timeout=20)
    listing = await asyncio.to_thread(rabbitmqctl, "list_queues", "name", "type", "arguments", "--no-table-headers")
    line = next(line for line in listing.splitlines() if line.split("\t")[0] == quorum.queue)
    assert "quorum" in line
    assert "x-delivery-limit" in line
    assert quorum.dlq in line


async def test_quorum_queue_sets_aside_a_message_that_keeps_killing_the_collector(
    quorum: Settings,
    launch: Launcher,
) -> None:
    """A reading whose collector dies every time (SIGKILL before the ack) lands in the DLQ, not in a loop."""
    connection = await aiormq.connect(quorum.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await broker.declare(channel, quorum)
    poison = body(id="poison")
    await publish(channel, quorum.queue, [poison])
    # Redis unreachable: the collector takes the message and can never ack it; then it is killed.
    dead_redis = replace(quorum, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    kills = 0
    while (await queue_counts(channel, quorum.dlq))[0] == 0:
        assert kills <= 10, "the delivery limit never set the message aside"
        collector = launch.sensorhub("collect", "--http-port", str(free_port()), settings=dead_redis)
        await wait_until(lambda: _held(quorum), timeout=15, what="message delivered to the collector")
        collector.kill()
        kills += 1
        await asyncio.sleep(0.3)
    assert kills >= 5
    got = await channel.basic_get(quorum.dlq, no_ack=True)
    assert got.body == poison
    assert got.header.properties.headers["x-first-death-reason"] in (b"delivery_limit", "delivery_limit")
    await connection.close()


async def _held(settings: Settings) -> bool:
    out = await asyncio.to_thread(rabbitmqctl, "list_queues", "name", "messages_unacknowledged", "--no-table-headers")
    return any(line.split("\t") == [settings.queue, "1"] for line in out.splitlines())


async def test_dashboard_replicas_give_the_same_ids_so_a_browser_resumes_on_either(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    launch: Launcher,
) -> None:
    """Two dashboards for one user: a client that read from one resumes on the other exactly."""
    first, second = launch.dashboard("user1", token="shared"), launch.dashboard("user1", token="shared")
    async with running_collector(settings):
        await publish(amqp, settings.queue, [body(id=f"r{i}") for i in range(100)])
        await wait_until(lambda: logged(redis, keys, 100))
        from_first = await read_events(first, 40, last_id="0-0")
        rest = asyncio.create_task(read_events(second, 80, last_id=from_first[-1].id))
        await asyncio.sleep(0.3)
        await publish(amqp, settings.queue, [body(id=f"r{i}") for i in range(100, 120)])
        from_second = await rest
    ids = [json.loads(e.data)["id"] for e in from_first + from_second]
    assert ids == [f"r{i}" for i in range(120)]
    again = await read_events(second, 40, last_id="0-0")
    assert [e.id for e in again] == [e.id for e in from_first]
