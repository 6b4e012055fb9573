"""What the collector writes to Redis, in one atomic step per user per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.exceptions import ClusterDownError

from sensorhub.keys import Keys
from sensorhub.reading import Reading, encode
from sensorhub.redis_client import AnyRedis, text

# One call stores any number of users' readings, as groups: per group, KEYS has the user's log
# then its data keys, ARGV its channel, its count, then its readings (JSON) in KEYS order.
# ARGV[1] is the ttl, ARGV[2] the publish command ('' = none).
# SET NX makes a redelivered reading a no-op; the log entry and notification exist iff the key was
# written, because a script runs as one unit. MINID trims log entries older than the TTL, exactly.
# The notification carries the new entries themselves (`ids`, `readings`) and the id of the entry
# before them (`after`): a dashboard whose cursor is `after` has them without reading Redis back.
# Pub/Sub keeps nothing, so a notification is built and sent only when a client is subscribed to the
# channel here (on a cluster, to the shard channel on this node), or to any pattern: one that
# subscribes later reads the log from its cursor, as it must after any gap.
# Returns, per group, which keys were written ('1'/'0' per data key), the log id of the last, and
# whether it was announced ('1'/''), for the caller's own notifications (RabbitMQ) and metrics.
_SAVE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local publish = ARGV[2]
local numsub = publish == 'SPUBLISH' and 'SHARDNUMSUB' or 'NUMSUB'
local patterns = publish == 'PUBLISH' and redis.call('PUBSUB', 'NUMPAT') > 0
local now = redis.call('TIME')
local min_id = string.format('%d-0', (tonumber(now[1]) - ttl) * 1000)
local replies = {}
local k, a = 1, 3
while a <= #ARGV do
  local log, channel, n = KEYS[k], ARGV[a], tonumber(ARGV[a + 1])
  k, a = k + 1, a + 2
  local heard = publish ~= '' and (patterns or redis.call('PUBSUB', numsub, channel)[2] > 0)
  local added, ids, values, written, last_id, after = {}, {}, {}, {}, nil, nil
  for i = 1, n do
    local key = KEYS[k]
    if redis.call('SET', key, ARGV[a], 'NX', 'EX', ttl) then
      if heard and not after then
        local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
        after = newest and newest[1] or '0-0'
      end
      last_id = redis.call('XADD', log, 'MINID', min_id, '*', 'key', key)
      if heard then
        added[#added + 1], ids[#ids + 1], values[#values + 1] = key, last_id, ARGV[a]
      end
      written[i] = '1'
    else
      written[i] = '0'
    end
    k, a = k + 1, a + 1
  end
  local announced = heard and last_id ~= nil
  if announced then
    redis.call(publish, channel, string.format('{"keys":%s,"last_id":"%s","after":"%s","ids":%s,"readings":[%s]}',
      cjson.encode(added), last_id, after, cjson.encode(ids), table.concat(values, ',')))
  end
  replies[#replies + 1] = table.concat(written)
  replies[#replies + 1] = last_id or ''
  replies[#replies + 1] = announced and '1' or ''
end
return replies
"""


Arg = str | int | bytes


class Added(NamedTuple):
    """One user's part of a batch that was new: its data keys, and the log id of the last."""

    keys: list[str]
    last_id: str


@dataclass(frozen=True)
class SaveResult:
    stored: dict[str, int]
    duplicates: dict[str, int]
    added: dict[str, Added] = field(default_factory=dict)  # only users with something new
    announced: frozenset[str] = frozenset()  # users whose new readings went out on their channel

    def then(self, again: SaveResult) -> SaveResult:
        """This batch stored once more (a replica lacked it): what either attempt wrote is new; the
        second attempt's duplicates are the first's own writes, so only the first's count."""
        stored = {user: n + again.stored.get(user, 0) for user, n in self.stored.items()}
        added = dict(self.added)
        for user, more in again.added.items():
            before = added.get(user)
            keys = dict.fromkeys([*(before.keys if before else []), *more.keys])  # a lost key written again: once
            added[user] = Added(list(keys), more.last_id)
        return SaveResult(stored, self.duplicates, added, self.announced | again.announced)


class Store:
    def __init__(self, redis: AnyRedis, keys: Keys, ttl_seconds: int, *, publish: bool = True) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        # On a cluster, notifications are sharded: they stay on the node that owns the user's slot.
        self._publish = ("SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH") if publish else ""
        self._script = redis.register_script(_SAVE_SCRIPT)

    async def save(self, readings: Iterable[Reading]) -> SaveResult:
        """Store, log and announce readings: one round trip for the whole batch."""
        by_user: dict[str, list[Reading]] = {}
        for reading in readings:
            by_user.setdefault(reading.user, []).append(reading)
        if not by_user:
            return SaveResult({}, {})
        keys = self._keys
        groups: list[tuple[list[str], list[Arg]]] = [
            (
                [keys.log(user), *(keys.data(user, r.ts_ms, r.id) for r in batch)],
                [keys.notify(user), len(batch), *map(encode, batch)],
            )
            for user, batch in by_user.items()
        ]
        head: list[Arg] = [self._ttl, self._publish]
        replies: list[bytes | str] = []
        if isinstance(self._redis, RedisCluster):
            # A script may touch one slot only: one call per user, each to the node that owns the
            # user's slot, all at once.
            for reply in await asyncio.gather(*(self._script(keys=k, args=[*head, *a]) for k, a in groups)):
                replies += reply
        else:
            # One call for every user: a call per user costs more than its readings when each
            # reading of the batch has a user of its own.
            all_keys = [key for group_keys, _ in groups for key in group_keys]
            all_args = [*head, *(arg for _, group_args in groups for arg in group_args)]
            replies = await self._script(keys=all_keys, args=all_args)
        added, stored, duplicates, announced = {}, {}, {}, set()
        for index, (user, (group_keys, _)) in enumerate(zip(by_user, groups, strict=True)):
            reply, last_id, heard = replies[3 * index : 3 * index + 3]
            written = text(reply)
            data_keys = group_keys[1:]
            if "0" in written:  # some were there already: a redelivery
                data_keys = [key for key, flag in zip(data_keys, written, strict=True) if flag == "1"]
            if last_id:
                added[user] = Added(data_keys, text(last_id))
            if heard:
                announced.add(user)
            stored[user] = len(data_keys)
            duplicates[user] = len(written) - len(data_keys)
        return SaveResult(stored, duplicates, added, frozenset(announced))

    async def replicas(self, users: Iterable[str], wanted: int, timeout_ms: int) -> int:
        """How many replicas have everything written so far to the masters of these users' keys (the
        fewest over those masters): WAIT, for up to timeout_ms, until `wanted` do.

        WAIT counts replicas that reached the offset of the connection's last command, so each WAIT
        is sent behind a PING on one connection: that offset is then the master's offset now, which
        covers the batch just written, whichever connection wrote it (and whichever earlier attempt).
        """
        if not isinstance(self._redis, RedisCluster):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.ping()
                pipe.execute_command("WAIT", wanted, timeout_ms)
                return int((await pipe.execute())[1])
        nodes: dict[str, ClusterNode] = {}
        for user in users:
            node = self._redis.get_node_from_key(self._keys.log(user))  # the master, after any MOVED
            if node is None:
                raise ClusterDownError(f"no master serves the slot of {user!r}")
            nodes[node.name] = node
        counts = await asyncio.gather(*(_wait_on(node, wanted, timeout_ms) for node in nodes.values()))
        return min(counts, default=wanted)


async def _wait_on(node: ClusterNode, wanted: int, timeout_ms: int) -> int:
    """PING then WAIT on one connection of a cluster node (redis-py routes a WAIT to every master)."""
    commands = [PipelineCommand(0, "PING"), PipelineCommand(1, "WAIT", wanted, timeout_ms)]
    await node.execute_pipeline(commands)
    for command in commands:
        if isinstance(command.result, Exception):
            raise command.result
    count = commands[1].result
    assert isinstance(count, int)
    return count
