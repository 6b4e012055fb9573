"""Redis connections: one factory, so every process gets the same timeouts and retries."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from sensorhub.settings import Settings

# Fail fast and let the caller's own loop decide: the collector keeps messages unacked, the
# dashboard catches up from its cursor. A silent half-open socket is caught by socket_timeout.
_OPTIONS: dict[str, Any] = {
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
    "socket_keepalive": True,
    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    "retry_on_error": [ConnectionError, TimeoutError],
}

AnyRedis = Redis | RedisCluster
MAX_CONNECTIONS = 32
POOL_TIMEOUT = 10.0


def connect(settings: Settings, name: str) -> AnyRedis:
    """A client whose connections carry `name`, so `CLIENT LIST` shows who is who.

    Its pool waits for a free connection rather than failing, so a burst of browsers reconnecting
    at once queues up instead of getting errors.
    """
    options = {**_OPTIONS, "client_name": name}
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT, health_check_interval=10, **options
    )
    return Redis.from_pool(pool)  # owns the pool: aclose() closes it
