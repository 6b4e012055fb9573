"""`sensorhub doctor`: one line per check, non-zero exit when something needed is missing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiormq
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError, ResponseError

from sensorhub import broker, redis_client
from sensorhub.settings import Settings, describe

OK, WARN, FAIL = "ok  ", "warn", "FAIL"
CLUSTER_SLOTS = 16384


def _line(status: str, what: str, detail: str) -> None:
    print(f"[{status}] {what}: {detail}")


async def _check_rabbitmq_nodes(settings: Settings) -> None:
    """With a list of URLs: one line per node, so an operator sees which of a cluster's nodes answer."""
    for url, shown in zip(settings.amqp_urls, describe(settings)["amqp_url"].split(","), strict=True):
        try:
            connection = await asyncio.wait_for(broker.connect(replace(settings, amqp_url=url), "sensorhub-doctor"), 5)
        except (aiormq.AMQPError, OSError, TimeoutError) as exc:
            _line(WARN, "RabbitMQ node", f"{shown} not reachable ({str(exc) or type(exc).__name__})")
            continue
        node = connection.server_properties.get("cluster_name", b"")
        await broker.close_quietly(connection)
        _line(OK, "RabbitMQ node", f"{shown} answers (cluster {node.decode() if isinstance(node, bytes) else node})")


async def _check_rabbitmq(settings: Settings) -> bool:
    url = describe(settings)["amqp_url"]
    if len(settings.amqp_urls) > 1:
        await _check_rabbitmq_nodes(settings)
    try:
        connection = await asyncio.wait_for(broker.connect(settings, "sensorhub-doctor"), 5)
    except (aiormq.AMQPError, OSError, TimeoutError) as exc:
        _line(FAIL, "RabbitMQ", f"not reachable at {url} ({str(exc) or type(exc).__name__})")
        return False
    try:
        props = {k: v.decode() if isinstance(v, bytes) else v for k, v in connection.server_properties.items()}
        _line(OK, "RabbitMQ", f"{props.get('product', 'RabbitMQ')} {props.get('version', '?')} at {url}")
        for name, role in ((settings.queue, "queue"), (settings.dlq, "dead-letter queue")):
            channel = await connection.channel()
            try:
                declared = await channel.queue_declare(name, passive=True)
                _line(
                    OK if role == "queue" or declared.message_count == 0 else WARN,
                    f"{role} {name}",
                    f"{declared.message_count} messages ready, {declared.consumer_count} consumers",
                )
            except aiormq.ChannelNotFoundEntity:
                _line(WARN, f"{role} {name}", "not declared yet (the collector or generator declares it)")
    finally:
        await connection.close()
    return True


async def _check_redis_cluster(redis: RedisCluster, min_replicas: int, one: dict[str, Any]) -> None:
    """The cluster's shape: masters, their replicas, slots served; a failed node or an unserved slot shows."""
    nodes: dict[str, dict[str, Any]] = await redis.execute_command("CLUSTER NODES", **one)
    masters = {n["node_id"]: addr for addr, n in nodes.items() if "master" in n["flags"] and "fail" not in n["flags"]}
    replicas: dict[str, list[str]] = {node_id: [] for node_id in masters}
    failed = [addr for addr, n in nodes.items() if "fail" in n["flags"] and "fail?" not in n["flags"]]
    for addr, n in nodes.items():
        if "slave" in n["flags"] and "fail" not in n["flags"] and n["master_id"] in replicas:
            replicas[n["master_id"]].append(addr)
    covered = 0
    for n in nodes.values():
        if n["node_id"] in masters:
            covered += sum(int(end) - int(start) + 1 for start, end in (_slot_range(r) for r in n["slots"]))
    status = OK if covered == CLUSTER_SLOTS and not failed else FAIL if covered < CLUSTER_SLOTS else WARN
    shape = (
        f"{len(masters)} masters, {sum(map(len, replicas.values()))} replicas, {covered}/{CLUSTER_SLOTS} slots served"
    )
    _line(status, "Redis Cluster", shape + (f"; failed: {', '.join(sorted(failed))}" if failed else ""))
    for node_id, addr in sorted(masters.items(), key=lambda item: item[1]):
        slots = ",".join("-".join(_slot_range(r)) for r in nodes[addr]["slots"]) or "none"
        ok = len(replicas[node_id]) >= min_replicas
        why = "" if ok else f" (fewer than SENSORHUB_REDIS_MIN_REPLICAS={min_replicas}: its users' batches are held)"
        _line(
            OK if ok else WARN,
            f"Redis master {addr.split('@')[0]}",
            f"slots {slots}; replicas: {', '.join(sorted(r.split('@')[0] for r in replicas[node_id])) or 'none'}{why}",
        )


def _slot_range(value: Any) -> tuple[str, str]:
    """A slot range of redis-py's CLUSTER NODES reply ([start, end] or 'start-end') as (start, end)."""
    if isinstance(value, list | tuple):
        return str(value[0]), str(value[-1])
    start, _, end = str(value).partition("-")
    return start, end or start


async def _check_redis(settings: Settings) -> bool:
    url = describe(settings)["redis_url"]
    redis = redis_client.connect(settings, "sensorhub-doctor")
    # On a cluster, ask one live master (redis-py would ask every node, and fail on a dead one).
    one: dict[str, Any] = {"target_nodes": RedisCluster.DEFAULT_NODE} if isinstance(redis, RedisCluster) else {}
    try:
        info = await redis.info("server", **one)
        _line(OK, "Redis", f"{info.get('redis_version', '?')} at {url}")
        if isinstance(redis, RedisCluster):
            await _check_redis_cluster(redis, settings.redis_min_replicas, one)
        persistence = await redis.info("persistence", **one)
        try:
            config = await redis.config_get("appendfsync", "save", **one)
        except ResponseError:
            config = {}
        aof = bool(persistence.get("aof_enabled"))
        rdb = bool(config.get("save"))
        if aof:
            _line(OK, "Redis persistence", f"AOF on (appendfsync {config.get('appendfsync', '?')})")
        elif rdb:
            _line(WARN, "Redis persistence", "RDB snapshots only: a crash loses writes since the last one")
        else:
            _line(
                WARN,
                "Redis persistence",
                "neither AOF nor RDB is on: a Redis restart loses the stored readings",
            )
        return True
    except (RedisError, OSError) as exc:
        _line(FAIL, "Redis", f"not reachable at {url} ({exc})")
        return False
    finally:
        await redis.aclose()


async def check(settings: Settings) -> int:
    """0 when RabbitMQ and Redis both answer, else 1; each check prints its own line."""
    rabbit_ok = await _check_rabbitmq(settings)
    redis_ok = await _check_redis(settings)
    return 0 if rabbit_ok and redis_ok else 1
