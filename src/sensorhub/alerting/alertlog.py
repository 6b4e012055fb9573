"""The user's alert log as the dashboard reads it: history, what fires now, acknowledgements, and a
follower that hands each new alert to the live feed (SSE event `alert`, WebSocket `{"type": "alert"}`).

Alert ids are the log's stream ids. The follower polls the log (one XRANGE after its cursor every
`poll_seconds`): alerts are rare, and it needs no channel of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import RedisError

from sensorhub.alerting import engine, rules
from sensorhub.backoff import pause
from sensorhub.dashboard.feed import Feed, Notice
from sensorhub.dashboard.userlog import START
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


class AlertFollower:
    """Announces every alert logged after start-up on the feed, once, in log order."""

    def __init__(self, alerts: AlertLog, feed: Feed, *, poll_seconds: float = 0.5) -> None:
        self._alerts = alerts
        self._feed = feed
        self._poll = poll_seconds
        self._stop = asyncio.Event()

    async def run(self) -> None:
        cursor: str | None = None
        while not self._stop.is_set():
            try:
                if cursor is None:
                    cursor = (await self._alerts.after(None, 1)).last_id
                page = await self._alerts.after(cursor, MAX_LIMIT)
                cursor = page.last_id
                for alert in page.alerts:
                    self._feed.announce(Notice("alert", json.dumps(alert, separators=(",", ":"))))
            except (RedisError, OSError) as exc:
                log.warning("alert log unavailable (%s)", exc)
            if await pause(self._stop, self._poll):
                return

    def stop(self) -> None:
        self._stop.set()
