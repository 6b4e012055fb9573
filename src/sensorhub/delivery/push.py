"""`sensorhub push`: delivers every user's readings to their webhook endpoints.

Every `scan_seconds` it reads the index of users with endpoints, and takes each endpoint no process
holds: a lease in Redis (SET NX PX), renewed at a third of its length. Several push processes share
the endpoints that way; when one dies, its leases run out and the others take its endpoints over
(within `lease_seconds` + `scan_seconds`), resending the message in flight with the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError

from sensorhub import metrics
from sensorhub.delivery import endpoints
from sensorhub.delivery.state import EndpointState, Scripts, lease_token
from sensorhub.delivery.worker import Delivery, Tuning
from sensorhub.keys import Keys
from sensorhub.polling import Rounds
from sensorhub.redis_client import AnyRedis

log = logging.getLogger("sensorhub.push")


class Pusher:
    def __init__(self, redis: AnyRedis, keys: Keys, tuning: Tuning | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._tuning = tuning or Tuning()
        self._token = lease_token()
        self._scripts = Scripts(redis)
        self._owned: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._rounds = Rounds(self._stop, self._tuning.scan_seconds, log)
        metrics.WEBHOOK_ENDPOINTS.set_function(lambda: len(self._owned))

    def health(self) -> dict[str, bool]:
        return {"redis": self._rounds.redis_ok}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Scan for endpoints until stopped; then end every delivery and give its lease back."""
        log.info("push started (lease holder %s)", self._token)
        try:
            await self._rounds.run(self._scan)
        finally:
            tasks = list(self._owned.values())
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            log.info("push stopped")

    async def _scan(self) -> bool:
        """Take every endpoint no process holds; always False: the next scan waits `scan_seconds`."""
        for user, endpoint_id in await endpoints.all_ids(self._redis, self._keys):
            if (user, endpoint_id) in self._owned or self._stop.is_set():
                continue
            fields = await self._redis.hmget(self._keys.webhook(user, endpoint_id), ["url", "disabled"])
            if fields[0] is None or fields[1] is not None:
                continue  # removed meanwhile, or disabled (410)
            state = EndpointState(self._redis, self._scripts, self._keys, user, endpoint_id, self._token)
            if await state.acquire(self._lease_ms):
                log.info("delivering to %s %s", user, endpoint_id)
                self._owned[(user, endpoint_id)] = asyncio.create_task(self._own(state, user, endpoint_id))
        return False

    @property
    def _lease_ms(self) -> int:
        return int(self._tuning.lease_seconds * 1000)

    async def _own(self, state: EndpointState, user: str, endpoint_id: str) -> None:
        """Run the endpoint's delivery while renewing its lease; stop it at once if the lease is lost."""
        delivery = Delivery(self._redis, self._keys, state, user, endpoint_id, self._tuning)
        worker = asyncio.create_task(delivery.run())
        held_until = time.monotonic() + self._tuning.lease_seconds
        try:
            while not worker.done():
                await asyncio.wait({worker}, timeout=self._tuning.lease_seconds / 3)
                if worker.done():
                    break
                try:
                    renewed = await state.renew(self._lease_ms)
                except (RedisError, OSError):
                    renewed = time.monotonic() < held_until  # still ours for now; try again soon
                else:
                    held_until = time.monotonic() + self._tuning.lease_seconds
                if not renewed:
                    log.warning("lost the lease of %s %s; another push process has it", user, endpoint_id)
                    break
        finally:
            delivery.stop()
            worker.cancel()
            await asyncio.wait({worker})
            if not worker.cancelled() and worker.exception() is not None:
                log.error("delivery to %s %s failed", user, endpoint_id, exc_info=worker.exception())
            with contextlib.suppress(RedisError, OSError):
                await state.release()
            self._owned.pop((user, endpoint_id), None)
