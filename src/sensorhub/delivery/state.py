"""Changes to an endpoint's delivery state, each one Lua script guarded by the lease.

Every change checks that this process still holds the endpoint's lease and that the endpoint still
exists: a process that lost its lease (paused, partitioned) cannot move a cursor the new owner
moved, and a removed endpoint is never brought back by a late write. All keys of one endpoint share
its user's hash tag, so the scripts also run on a Redis Cluster.
"""

from __future__ import annotations

import os
import secrets
import socket

from sensorhub.delivery.endpoints import Message
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis

# KEYS: endpoint hash, lease. ARGV[1]: lease token.
_GUARD = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
"""
_MESSAGE_FIELDS = "'msg_id', 'msg_end', 'msg_offset', 'msg_count', 'msg_expired', 'msg_first_ms', 'msg_body'"

# ARGV: token, message id ('' = none in flight), cursor, offset, delivered, expired.
_COMMIT = (
    _GUARD
    + f"""
if (redis.call('HGET', KEYS[1], 'msg_id') or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'cursor', ARGV[3], 'offset', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'delivered', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'expired', ARGV[6])
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[1], 'failing_since', 'last_error', {_MESSAGE_FIELDS}) end
return 1
"""
)
# ARGV: token, then the message's fields and values.
_PREPARE = (
    _GUARD
    + """
if redis.call('HEXISTS', KEYS[1], 'msg_id') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
)
# ARGV: token, now (ms), error text.
_FAIL = (
    _GUARD
    + """
redis.call('HSETNX', KEYS[1], 'failing_since', ARGV[2])
redis.call('HSET', KEYS[1], 'last_error', ARGV[3])
return 1
"""
)
# ARGV: token, reason.
_DISABLE = (
    _GUARD
    + """
redis.call('HSET', KEYS[1], 'disabled', ARGV[2])
return 1
"""
)
# An alert delivered: ARGV: token, the alert cursor it was sent from ('' = none yet), the alert's id.
_COMMIT_ALERT = (
    _GUARD
    + """
if (redis.call('HGET', KEYS[1], 'alert_cursor') or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'alert_cursor', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'alerts_delivered', 1)
redis.call('HDEL', KEYS[1], 'failing_since', 'last_error')
return 1
"""
)
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def lease_token() -> str:
    """Names the holder (host:pid) for operators and tests, plus randomness so it is never reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Scripts:
    """The lease-guarded scripts, registered once per process (each endpoint's state shares them)."""

    def __init__(self, redis: AnyRedis) -> None:
        self.commit = redis.register_script(_COMMIT)
        self.commit_alert = redis.register_script(_COMMIT_ALERT)
        self.prepare = redis.register_script(_PREPARE)
        self.fail = redis.register_script(_FAIL)
        self.disable = redis.register_script(_DISABLE)
        self.renew = redis.register_script(_RENEW)
        self.release = redis.register_script(_RELEASE)


class EndpointState:
    """The delivery state of one endpoint, as seen by the process that holds (or wants) its lease."""

    def __init__(self, redis: AnyRedis, scripts: Scripts, keys: Keys, user: str, endpoint_id: str, token: str) -> None:
        self._redis = redis
        self._keys = [keys.webhook(user, endpoint_id), keys.webhook_lease(user, endpoint_id)]
        self.token = token
        self._commit, self._prepare, self._fail = scripts.commit, scripts.prepare, scripts.fail
        self._disable, self._renew, self._release = scripts.disable, scripts.renew, scripts.release
        self._commit_alert = scripts.commit_alert

    async def acquire(self, lease_ms: int) -> bool:
        return bool(await self._redis.set(self._keys[1], self.token, nx=True, px=lease_ms))

    async def renew(self, lease_ms: int) -> bool:
        return bool(await self._renew(keys=self._keys[1:], args=[self.token, lease_ms]))

    async def release(self) -> None:
        await self._release(keys=self._keys[1:], args=[self.token])

    async def commit(self, message_id: str, cursor: str, offset: int, delivered: int, expired: int) -> bool:
        """Move the cursor past a delivered message (or past entries that all expired: message_id '')."""
        args: list[str | int] = [self.token, message_id, cursor, offset, delivered, expired]
        return bool(await self._commit(keys=self._keys, args=args))

    async def commit_alert(self, sent_from: str, alert_id: str) -> bool:
        """Move the alert cursor past a delivered alert, if it is still where it was sent from."""
        return bool(await self._commit_alert(keys=self._keys, args=[self.token, sent_from, alert_id]))

    async def prepare(self, message: Message) -> bool:
        """Keep the message before its first attempt, so every retry (by any process) sends it as it is."""
        fields: list[str | int | bytes] = [
            "msg_id", message.id, "msg_end", message.end, "msg_offset", message.offset,
            "msg_count", message.count, "msg_expired", message.expired,
            "msg_first_ms", message.first_log_ms, "msg_body", message.body,
        ]  # fmt: skip
        return bool(await self._prepare(keys=self._keys, args=[self.token, *fields]))

    async def fail(self, now_ms: int, error: str) -> bool:
        return bool(await self._fail(keys=self._keys, args=[self.token, now_ms, error]))

    async def disable(self, reason: str) -> bool:
        return bool(await self._disable(keys=self._keys, args=[self.token, reason]))
