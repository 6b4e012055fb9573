"""What the collector writes to Redis, in one atomic step per user per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError

from sensorhub.keys import Keys
from sensorhub.reading import Reading, encode
from sensorhub.redis_client import AnyRedis

# KEYS: log, data keys...  ARGV: ttl, publish command, channel, readings (JSON) in KEYS order.
# SET NX makes a redelivered reading a no-op; the log entry and notification exist iff the key was
# written, because a script runs as one unit. MINID trims log entries older than the TTL, exactly.
_SAVE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local now = redis.call('TIME')
local min_id = string.format('%d-0', (tonumber(now[1]) - ttl) * 1000)
local added = {}
local last_id
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[i + 2], 'NX', 'EX', ttl) then
    last_id = redis.call('XADD', KEYS[1], 'MINID', min_id, '*', 'key', KEYS[i])
    added[#added + 1] = KEYS[i]
  end
end
if last_id then
  redis.call(ARGV[2], ARGV[3], cjson.encode({keys = added, last_id = last_id}))
end
return #added
"""


@dataclass(frozen=True)
class SaveResult:
    stored: dict[str, int]
    duplicates: dict[str, int]


class Store:
    def __init__(self, redis: AnyRedis, keys: Keys, ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        # On a cluster, notifications are sharded: they stay on the node that owns the user's slot.
        self._publish = "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"
        self._script = redis.register_script(_SAVE_SCRIPT)

    async def _pipelined(self, calls: list[tuple[list[str], list[str | int | bytes]]]) -> list[int]:
        # EVALSHA in a plain pipeline: redis-py's script-on-pipeline asks SCRIPT EXISTS first, which
        # costs a round trip per batch. The script is loaded only when Redis says it lacks it.
        try:
            return await self._evalsha_all(calls)
        except NoScriptError:
            await self._redis.script_load(_SAVE_SCRIPT)  # a restarted or flushed Redis
            return await self._evalsha_all(calls)

    async def _evalsha_all(self, calls: list[tuple[list[str], list[str | int | bytes]]]) -> list[int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            return list(await pipe.execute())

    async def save(self, readings: Iterable[Reading]) -> SaveResult:
        """Store, log and announce readings: one round trip for the whole batch."""
        by_user: dict[str, list[Reading]] = {}
        for reading in readings:
            by_user.setdefault(reading.user, []).append(reading)
        if not by_user:
            return SaveResult({}, {})
        calls: list[tuple[list[str], list[str | int | bytes]]] = [
            (
                [self._keys.log(user), *(self._keys.data(user, r.ts_ms, r.id) for r in batch)],
                [self._ttl, self._publish, self._keys.notify(user), *map(encode, batch)],
            )
            for user, batch in by_user.items()
        ]
        added: Sequence[int]
        if isinstance(self._redis, RedisCluster):
            # One call per user, each to the node that owns that user's slot, all at once.
            added = await asyncio.gather(*(self._script(keys=k, args=a) for k, a in calls))
        else:
            added = await self._pipelined(calls)
        stored = dict(zip(by_user, added, strict=True))
        duplicates = {user: len(batch) - stored[user] for user, batch in by_user.items()}
        return SaveResult(stored, duplicates)
