"""`sensorhub doctor`: one line per check, non-zero exit when something needed is missing."""

from __future__ import annotations

import asyncio

import aiormq
from redis.exceptions import RedisError, ResponseError

from sensorhub import broker, redis_client
from sensorhub.settings import Settings, describe

OK, WARN, FAIL = "ok  ", "warn", "FAIL"


def _line(status: str, what: str, detail: str) -> None:
    print(f"[{status}] {what}: {detail}")


async def _check_rabbitmq(settings: Settings) -> bool:
    url = describe(settings)["amqp_url"]
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


async def _check_redis(settings: Settings) -> bool:
    url = describe(settings)["redis_url"]
    redis = redis_client.connect(settings, "sensorhub-doctor")
    try:
        info = await redis.info("server")
        _line(OK, "Redis", f"{info.get('redis_version', '?')} at {url}")
        persistence = await redis.info("persistence")
        try:
            config = await redis.config_get("appendfsync", "save")
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
