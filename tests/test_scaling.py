"""Scale-out on real engines: a Redis Cluster, RabbitMQ quorum queues, dashboard replicas."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiormq
import httpx
import pytest
from redis.asyncio import Redis, RedisCluster

from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.conftest import free_port, logged, publish, queue_counts, sensorhub, settings_env, wait_until
from tests.readings import body
from tests.test_dashboard_api import stream_ids


@pytest.fixture(name="cluster_url", scope="module")
def _cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on free local ports, made with redis-cli --cluster create."""
    root = tmp_path_factory.mktemp("cluster")
    ports = _cluster_ports(3)
    servers = []
    for port in ports:
        node_dir: Path = root / str(port)
        node_dir.mkdir()
        servers.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                cwd=node_dir,
                stdout=subprocess.DEVNULL,
            )
        )
    try:
        for port in ports:
            _wait_for_port(port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while (
            b"cluster_state:ok"
            not in subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "info"], capture_output=True).stdout
        ):
            assert time.monotonic() < deadline, "cluster did not become ok"
            time.sleep(0.2)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    import random
    import socket

    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 40000)
        try:
            for candidate in (port, port + 10000):
                socket.create_server(("127.0.0.1", candidate)).close()
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
    return ports


def _wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


async def test_pipeline_and_dashboard_work_on_a_redis_cluster(
    settings: Settings,
    amqp: aiormq.abc.AbstractChannel,
    cluster_url: str,
    processes,
    dashboards,
) -> None:
    """Collector and dashboard against a 3-master cluster: each user's keys share a slot, SSE is live."""
    on_cluster = replace(settings, redis_url=cluster_url, redis_cluster=True)
    keys = Keys(settings.namespace)
    users = [f"user{n}" for n in range(1, 7)]
    collector = sensorhub("collect", "--http-port", str(free_port()), env=settings_env(on_cluster))
    processes.append(collector)
    from tests.conftest import Dashboard

    dashboard = Dashboard(on_cluster, "user1", "cluster-token").start()
    try:
        reader = asyncio.create_task(stream_ids(dashboard, 50))
        await asyncio.sleep(0.5)
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
    finally:
        dashboard.stop()


@pytest.fixture(name="quorum")
def _quorum(settings: Settings) -> Settings:
    return replace(settings, queue_type="quorum")


async def test_quorum_queue_carries_the_pipeline(
    quorum: Settings,
    keys: Keys,
    redis: Redis,
    processes,
) -> None:
    """SENSORHUB_QUEUE_TYPE=quorum: the generator and collector declare and use a quorum queue."""
    env = settings_env(quorum)
    collector = sensorhub("collect", "--http-port", str(free_port()), env=env)
    processes.append(collector)
    generator = sensorhub("generate", "--count", "500", "--rate", "0", env=env)
    processes.append(generator)
    assert generator.wait(60) == 0
    await wait_until(lambda: logged(redis, keys, 500, ("user1", "user2")), timeout=20)
    listing = await _rabbitmqctl("list_queues", "name", "type", "arguments")
    line = next(line for line in listing.splitlines() if line.split("\t")[0] == quorum.queue)
    assert "quorum" in line
    assert "x-delivery-limit" in line
    assert quorum.dlq in line


async def test_quorum_queue_sets_aside_a_message_that_keeps_killing_the_collector(
    quorum: Settings,
    processes,
) -> None:
    """A reading whose collector dies every time (SIGKILL before the ack) lands in the DLQ, not in a loop."""
    connection = await aiormq.connect(quorum.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    from sensorhub import broker

    await broker.declare(channel, quorum)
    poison = body(id="poison")
    await publish(channel, quorum.queue, [poison])
    # Redis unreachable: the collector takes the message and can never ack it; then it is killed.
    dead_redis = replace(quorum, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    kills = 0
    while (await queue_counts(channel, quorum.dlq))[0] == 0:
        assert kills <= 10, "the delivery limit never set the message aside"
        collector = sensorhub("collect", "--http-port", str(free_port()), env=settings_env(dead_redis))
        processes.append(collector)
        await wait_until(lambda: _held(quorum), timeout=15, what="message delivered to the collector")
        collector.send_signal(signal.SIGKILL)
        collector.wait(10)
        kills += 1
        await asyncio.sleep(0.3)
    assert kills >= 5
    got = await channel.basic_get(quorum.dlq, no_ack=True)
    assert got.body == poison
    assert got.header.properties.headers["x-first-death-reason"] in (b"delivery_limit", "delivery_limit")
    await connection.close()


async def _held(settings: Settings) -> bool:
    out = await _rabbitmqctl("list_queues", "name", "messages_unacknowledged")
    return any(line.split("\t") == [settings.queue, "1"] for line in out.splitlines())


async def test_dashboard_replicas_give_the_same_ids_so_a_browser_resumes_on_either(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    dashboards,
) -> None:
    """Two dashboards for one user: a client that read from one resumes on the other exactly."""
    from tests.conftest import running_collector

    first, second = dashboards("user1", token="shared"), dashboards("user1", token="shared")
    async with running_collector(settings):
        await publish(amqp, settings.queue, [body(id=f"r{i}") for i in range(100)])
        await wait_until(lambda: logged(redis, keys, 100))
        from_first = await stream_ids(first, 40, last_id="0-0")
        rest = asyncio.create_task(stream_ids(second, 80, last_id=from_first[-1].id))
        await asyncio.sleep(0.3)
        await publish(amqp, settings.queue, [body(id=f"r{i}") for i in range(100, 120)])
        from_second = await rest
    ids = [json.loads(e.data)["id"] for e in from_first + from_second]
    assert ids == [f"r{i}" for i in range(120)]
    again = await stream_ids(second, 40, last_id="0-0")
    assert [e.id for e in again] == [e.id for e in from_first]


async def _rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, "--no-table-headers", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return out.decode()
