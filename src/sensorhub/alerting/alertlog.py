"""The user's alert log as the dashboard reads it: history, what fires now, acknowledgements, and a
follower that hands each new alert to the live feed (SSE event `alert`, WebSocket `{"type": "alert"}`).

Alert ids are the log's stream ids. The follower polls: alerts are rare, and need no channel of their
own. One MGET reads the newest alert id (`alert_newest`, which the evaluator sets with each alert) of
every user it follows (one per-user dashboard, or every user `sensorhub web` has a viewer for); only
a user whose id moved has their log read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from sensorhub.alerting import engine, rules
from sensorhub.backoff import pause
from sensorhub.dashboard.feed import Feed, Notice
from sensorhub.dashboard.userlog import START, parse_log_id
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis, text

log = logging.getLogger("sensorhub.dashboard")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_Entries = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True)
class Page:
    alerts: list[dict[str, Any]]  # each alert event plus its `id`, oldest first
    last_id: str


class AlertLog:
    def __init__(self, redis: AnyRedis, keys: Keys, user: str) -> None:
        self._redis = redis
        self._keys = keys
        self._user = user
        self._key = keys.alerts(user)

    async def after(self, after: str | None, limit: int) -> Page:
        """Alerts after `after`, oldest first; without it the newest `limit`."""
        if after is None:
            raw = list(reversed(cast(_Entries, await self._redis.xrevrange(self._key, count=limit) or [])))
        else:
            raw = cast(_Entries, await self._redis.xrange(self._key, min=f"({after}", count=limit) or [])
        acked = {text(k) for k in await self._redis.hkeys(self._keys.alert_acks(self._user))} if raw else set()
        alerts = [_alert(entry_id, fields, acked) for entry_id, fields in raw]
        return Page([a for a in alerts if a is not None], text(raw[-1][0]) if raw else (after or START))

    async def firing(self) -> list[dict[str, Any]]:
        """What fires now, per `sensorhub alerts`' state: `{"rule", "station"}` each."""
        raw = await self._redis.get(self._keys.alert_state(self._user))
        state = engine.decode_state(raw) if raw is not None else None
        if state is None:
            return []
        pairs = engine.firing(state)
        return [{"rule": rules.to_builtins(rule), "station": station} for rule, station in pairs]

    async def acknowledge(self, alert_id: str, ttl_seconds: int) -> bool:
        """Mark an alert acknowledged; False if the log holds no such alert."""
        if not await self._redis.xrange(self._key, min=alert_id, max=alert_id, count=1):
            return False
        key = self._keys.alert_acks(self._user)
        await self._redis.hset(key, alert_id, int(time.time() * 1000))
        await self._redis.expire(key, ttl_seconds)
        return True


def _alert(entry_id: bytes, fields: dict[bytes, bytes], acked: set[str]) -> dict[str, Any] | None:
    try:
        alert = json.loads(fields[b"alert"])
    except (KeyError, ValueError):
        return None
    alert_id = text(entry_id)
    return {"id": alert_id, **alert, "acknowledged": alert_id in acked}


@dataclass
class _Followed:
    feed: Feed
    cursor: str | None = None  # the newest alert announced or already there; None: not read yet


class AlertFollower:
    """Announces every alert logged after a user is followed on that user's feed, once, in log order."""

    def __init__(self, redis: AnyRedis, keys: Keys, *, poll_seconds: float = 0.5) -> None:
        self._redis = redis
        self._keys = keys
        self._poll = poll_seconds
        self._followed: dict[str, _Followed] = {}
        self._stop = asyncio.Event()

    def follow(self, user: str, feed: Feed) -> None:
        self._followed[user] = _Followed(feed)

    def unfollow(self, user: str) -> None:
        self._followed.pop(user, None)

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._round()
            except (RedisError, OSError) as exc:
                log.warning("alert log unavailable (%s)", exc)
            if await pause(self._stop, self._poll):
                return

    async def _round(self) -> None:
        for user, new in list(self._followed.items()):
            if new.cursor is None:  # from the log itself: alerts logged before the id was kept are old
                new.cursor = (await AlertLog(self._redis, self._keys, user).after(None, 1)).last_id
        users = list(self._followed)
        if not users:
            return
        newest_keys = [self._keys.alert_newest(user) for user in users]
        if isinstance(self._redis, RedisCluster):
            newest = await self._redis.mget_nonatomic(newest_keys)  # one MGET per slot
        else:
            newest = await self._redis.mget(newest_keys)
        for user, newest_id in zip(users, newest, strict=True):
            followed = self._followed.get(user)
            if newest_id is None or followed is None or followed.cursor is None:
                continue  # no alert yet, or let go of meanwhile
            if parse_log_id(text(newest_id)) > parse_log_id(followed.cursor):
                page = await AlertLog(self._redis, self._keys, user).after(followed.cursor, MAX_LIMIT)
                followed.cursor = page.last_id
                for alert in page.alerts:
                    followed.feed.announce(Notice("alert", json.dumps(alert, separators=(",", ":"))))

    def stop(self) -> None:
        self._stop.set()
