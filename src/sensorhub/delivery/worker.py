"""One endpoint's delivery loop: the readings after its cursor, a message at a time, until a 2xx.

Each endpoint has a task and an HTTP client of its own, so a slow, failing or blackholed endpoint
never delays another. New readings are found by polling the log (XINFO STREAM, O(1)) every
`poll_seconds`: half a second of latency at most, without a Pub/Sub connection per endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import cast

import httpx
import msgspec
from redis.exceptions import RedisError

from sensorhub import metrics
from sensorhub.backoff import Backoff, pause
from sensorhub.dashboard.userlog import START, UserLog, parse_log_id
from sensorhub.delivery import endpoints, sender
from sensorhub.delivery.endpoints import Endpoint, Message, StreamInfo
from sensorhub.delivery.state import EndpointState
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis, text

log = logging.getLogger("sensorhub.push")
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Tuning:
    timeout: float = 10.0  # per request
    retry_first: float = 1.0
    retry_cap: float = 300.0
    retry_after_cap: float = 3600.0  # a Retry-After above this is taken as this
    batch: int = 100  # readings per request at most
    poll_seconds: float = 0.5
    lease_seconds: float = 10.0
    scan_seconds: float = 1.0


class Delivery:
    def __init__(
        self, redis: AnyRedis, keys: Keys, state: EndpointState, user: str, endpoint_id: str, tuning: Tuning
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._state = state
        self.user = user
        self.endpoint_id = endpoint_id
        self._tuning = tuning
        self._log = UserLog(redis, keys, user)
        self._stop = asyncio.Event()
        self._retry = Backoff(tuning.retry_first, tuning.retry_cap, self._stop, jitter=True)
        self._attempts = 0
        self._oldest_ms = 0  # log time of the oldest reading not yet delivered; 0: none
        metrics.WEBHOOK_LAG.labels(user, endpoint_id).set_function(self._lag)

    def _lag(self) -> float:
        return max(0.0, time.time() - self._oldest_ms / 1000) if self._oldest_ms else 0.0

    async def run(self) -> None:
        """Deliver until the endpoint is removed or disabled (or the task is cancelled)."""
        redis_retry = Backoff(0.1, 2.0, self._stop)
        timeout = httpx.Timeout(self._tuning.timeout)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as http:
            try:
                while not self._stop.is_set():
                    try:
                        if not await self._step(http):
                            return
                        redis_retry.reset()
                    except (RedisError, OSError) as exc:
                        log.warning("%s %s: redis unavailable (%s)", self.user, self.endpoint_id, exc)
                        await redis_retry.wait()
            finally:
                metrics.WEBHOOK_LAG.remove(self.user, self.endpoint_id)
                metrics.WEBHOOK_BACKLOG.remove(self.user, self.endpoint_id)

    async def _step(self, http: httpx.AsyncClient) -> bool:
        """One attempt, or one look at the log; False once there is nothing more to do for this endpoint."""
        endpoint = await endpoints.load(self._redis, self._keys, self.user, self.endpoint_id)
        if endpoint is None or endpoint.disabled:
            return False
        alert = await self._next_alert(endpoint)
        if alert is not None:
            return await self._attempt(http, endpoint, alert, alert_from=endpoint.alert_cursor)
        info = await endpoints.stream_info(self._redis, self._keys.log(self.user))
        metrics.WEBHOOK_BACKLOG.labels(self.user, self.endpoint_id).set(endpoints.backlog(endpoint, info))
        message = endpoint.message or await self._next(endpoint, info)
        if message is None:
            self._oldest_ms = 0
            await pause(self._stop, self._tuning.poll_seconds)
        elif message.id:
            self._oldest_ms = message.first_log_ms
            return await self._attempt(http, endpoint, message)
        return True

    async def _next(self, endpoint: Endpoint, info: StreamInfo) -> Message | None:
        """The next message after the cursor, kept in Redis before it is sent; entries that expired are
        counted on the way. None: nothing new. A message with no id: the cursor moved past expired ones."""
        if info.last_id == endpoint.cursor:
            return None
        trimmed = max(0, info.entries_added - info.length - endpoint.offset)  # gone from the log unseen
        page = await self._log.after(endpoint.cursor, self._tuning.batch)
        offset = endpoint.offset + trimmed + page.scanned
        expired = trimmed + page.scanned - len(page.entries)
        if not page.entries:
            if expired and await self._state.commit("", page.last_id, offset, 0, expired):
                self._count_expired(endpoint, expired)
                return Message("", page.last_id, offset, 0, expired, b"", 0)
            return None
        readings = [reading for _, reading in page.entries]
        body = _encode({"type": "readings", "user": self.user, "readings": readings})
        first_ms = parse_log_id(readings[0].log_id)[0]
        message = Message(f"msg_{secrets.token_hex(12)}", page.last_id, offset, len(readings), expired, body, first_ms)
        if not await self._state.prepare(message):
            return None  # lease lost or endpoint removed: the next step finds out
        return message

    async def _next_alert(self, endpoint: Endpoint) -> Message | None:
        """The first alert after the endpoint's alert cursor, as one message of its own.

        Alerts go before readings (they are few and urgent). The message is made from the alert log
        entry alone, so a retry, by any process, sends the same webhook-id and body without keeping it.
        """
        after = endpoint.alert_cursor or START
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self._redis.xrange(self._keys.alerts(self.user), min=f"({after}", count=1) or [],
        )
        if not entries:
            return None
        entry_id, fields = entries[0]
        alert_id = text(entry_id)
        alert = msgspec.json.decode(fields[b"alert"])
        body = _encode({**alert, "type": "alert", "user": self.user, "id": alert_id})
        return Message(f"msg_alert_{alert_id}", alert_id, 0, 0, 0, body, parse_log_id(alert_id)[0])

    async def _attempt(
        self, http: httpx.AsyncClient, endpoint: Endpoint, message: Message, *, alert_from: str | None = None
    ) -> bool:
        self._attempts += 1
        outcome = await sender.send(http, endpoint, message)
        metrics.WEBHOOK_DELIVERIES.labels(self.user, outcome.kind).inc()
        if outcome.kind == "delivered" and alert_from is not None:
            await self._state.commit_alert(alert_from, message.end)
            self._attempts = 0
            self._retry.reset()
            return True
        if outcome.kind == "delivered":
            if await self._state.commit(message.id, message.end, message.offset, message.count, message.expired):
                metrics.WEBHOOK_READINGS.labels(self.user).inc(message.count)
                metrics.WEBHOOK_ATTEMPTS.labels(self.user).observe(self._attempts)
                self._count_expired(endpoint, message.expired)
                if endpoint.failing_since_ms is not None:
                    log.info("%s %s: delivering again", self.user, endpoint.id)
            self._attempts = 0
            self._retry.reset()
            return True
        if outcome.kind == "gone":
            log.warning("%s %s: %s answered 410 Gone; endpoint disabled", self.user, endpoint.id, endpoint.url)
            await self._state.disable(f"410 Gone at {_now_iso()}")
            return False
        if endpoint.failing_since_ms is None:
            log.warning("%s %s: %s failed (%s); retrying", self.user, endpoint.id, endpoint.url, outcome.error)
        await self._state.fail(int(time.time() * 1000), outcome.error)
        await self._wait(outcome)
        return True

    async def _wait(self, outcome: sender.Outcome) -> None:
        """Backoff with full jitter; a Retry-After (429/503) is honoured instead."""
        if outcome.retry_after is not None:
            await pause(self._stop, min(outcome.retry_after, self._tuning.retry_after_cap))
        else:
            await self._retry.wait()

    def _count_expired(self, endpoint: Endpoint, expired: int) -> None:
        if expired:
            metrics.WEBHOOK_EXPIRED.labels(self.user).inc(expired)
            log.warning("%s %s: %d reading(s) expired before delivery", self.user, endpoint.id, expired)

    def stop(self) -> None:
        self._stop.set()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
