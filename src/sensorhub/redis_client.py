"""Redis connections: one factory, so every process gets the same timeouts, retries and errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Connection, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, RedisClusterException, RedisError, TimeoutError
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


def text(value: bytes | str) -> str:
    """A reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value


MAX_CONNECTIONS = 32
POOL_TIMEOUT = 10.0


class _Connection(Connection):
    """A TCP connection whose every failure is a `ConnectionError`, so callers catch `RedisError` alone,
    and whose commands are packed in C.

    uvloop reports a connection reset before the first write (the HELLO of a new connection) as
    RuntimeError ("the handler is closed"), where asyncio's own loop says ConnectionError. As the
    latter it is also retried by `Retry` like any other reset.
    """

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        """hiredis's packer, which redis-py's sync client uses and its asyncio one does not: a third
        of the time per argument. The collector's script call has two arguments for every reading
        and three for every user in the batch."""
        packed: list[bytes] = self._packer.pack(*args)
        return packed

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:  # super() has already disconnected
            raise ConnectionError(f"connection reset: {exc}") from exc


def connect(settings: Settings, name: str, *, max_connections: int = MAX_CONNECTIONS) -> AnyRedis:
    """A client whose connections carry `name`, so `CLIENT LIST` shows who is who.

    Its pool waits for a free connection rather than failing, so a burst of browsers reconnecting
    at once queues up instead of getting errors.
    """
    options = {**_OPTIONS, "client_name": name}
    if settings.redis_cluster:
        return _translating(RedisCluster.from_url(settings.redis_url, **options))
    # A rediss:// URL keeps redis-py's own SSLConnection: from_url lets the scheme decide.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        connection_class=_Connection,
        max_connections=max_connections,
        timeout=POOL_TIMEOUT,
        health_check_interval=10,
        **options,
    )
    return Redis.from_pool(pool)  # owns the pool: aclose() closes it


async def answers(redis: AnyRedis) -> bool:
    """Whether Redis answers a PING now: for a /healthz, which reports an outage rather than failing with it."""
    try:
        await redis.ping()
    except RedisError:
        return False
    return True


def _translating(cluster: RedisCluster) -> RedisCluster:
    """Give a cluster's nodes `_Connection`: RedisCluster takes no connection_class, so set it as
    redis-py itself sets per-connection options after construction: on the template for nodes
    found later and on the startup nodes already built (connections are made lazily, so in time).
    """
    nodes = cluster.nodes_manager
    if nodes.connection_kwargs.get("connection_class") is Connection:  # not rediss://
        nodes.connection_kwargs["connection_class"] = _Connection
        for node in nodes.startup_nodes.values():
            node.connection_class = _Connection
    return cluster


Read = Callable[..., Awaitable[Any]]  # read(ignore_subscribe_messages=True, timeout=seconds) -> message or None


@contextlib.asynccontextmanager
async def subscribed(redis: AnyRedis, channel: str) -> AsyncIterator[Read]:
    """Subscribed to `channel` while the block runs; yields the subscription's reader.

    On a cluster the subscription is sharded (SSUBSCRIBE), like the collector's SPUBLISH, so it
    stays on the node that owns the channel's slot.
    """
    pubsub: PubSub
    read: Read
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # learn the cluster's slots first
        cluster_pubsub = redis.pubsub()
        try:
            await cluster_pubsub.ssubscribe(channel)
        except (ConnectionError, TimeoutError):
            await _refresh_slots(redis)
            raise
        pubsub, read = cluster_pubsub, cluster_pubsub.get_sharded_message
    else:
        pubsub = redis.pubsub()
        await pubsub.subscribe(channel)
        read = pubsub.get_message
    try:
        yield read
    except (ConnectionError, TimeoutError):
        if isinstance(redis, RedisCluster):
            await _refresh_slots(redis)
        raise
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py


async def _refresh_slots(redis: RedisCluster) -> None:
    """Ask a live node who serves which slots now: a subscription, unlike a command, does not make
    redis-py refresh its map when its node dies, so the caller's next try would go to the dead
    master forever instead of to the replica that took over."""
    with contextlib.suppress(
        RedisError, RedisClusterException, OSError
    ):  # no node answers now: the next try asks again
        await redis.nodes_manager.initialize()
