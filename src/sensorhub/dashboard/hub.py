"""The per-user state of `sensorhub web`, held only while someone watches that user.

A user's log reader and live feed (with its subscription; their new alerts are announced on it)
start when their first viewer arrives and stop LINGER_SECONDS after the last one leaves: a page
load followed by its stream, or a reconnect, reuses the feed instead of subscribing twice; a
thousand users nobody watches cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sensorhub import metrics
from sensorhub.alerting.alertlog import AlertFollower
from sensorhub.dashboard.feed import Feed, Notifications
from sensorhub.dashboard.userlog import UserLog
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis
from sensorhub.settings import Settings

log = logging.getLogger("sensorhub.web")

LINGER_SECONDS = 2.0
READY_SECONDS = 5.0  # longest a stream waits for a new feed's subscription (Redis down: the stream says so)


@dataclass
class _Watched:
    userlog: UserLog
    feed: Feed
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    viewers: int = 0
    task: asyncio.Task[None] | None = None
    linger: asyncio.TimerHandle | None = None


class Hub:
    def __init__(
        self,
        settings: Settings,
        redis: AnyRedis,
        wakeups: Callable[[str], Notifications],
        *,
        linger: float = LINGER_SECONDS,
    ) -> None:
        """`wakeups(user)`: what wakes that user's feed (a shared Pub/Sub connection, or the user's queue)."""
        self._settings = settings
        self._redis = redis
        self._wakeups = wakeups
        self._keys = Keys(settings.namespace)
        self._linger = linger
        self._users: dict[str, _Watched] = {}
        self._ending: set[asyncio.Task[None]] = set()  # feeds released and still stopping
        self._alerts = AlertFollower(redis, self._keys)  # one MGET per round for every watched user
        self._alerting = asyncio.create_task(self._alerts.run(), name="alerts")

    @property
    def watched(self) -> int:
        """Users with a live feed now."""
        return len(self._users)

    @property
    def stream_clients(self) -> int:
        return sum(w.feed.client_count for w in self._users.values())

    @contextlib.asynccontextmanager
    async def watching(self, user: str, *, ready: bool = False) -> AsyncIterator[tuple[UserLog, Feed]]:
        """The user's log and feed while the block runs; with `ready`, once the feed follows the log.

        A stream must wait for that: a feed that took its cursor after the stream's replay ended
        would never broadcast what was stored in between.
        """
        watched = self._users.get(user) or self._start(user)
        watched.viewers += 1
        if watched.linger is not None:
            watched.linger.cancel()
            watched.linger = None
        try:
            if ready and not watched.feed.ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watched.feed.ready.wait(), READY_SECONDS)
            yield watched.userlog, watched.feed
        finally:
            watched.viewers -= 1
            if watched.viewers == 0 and self._users.get(user) is watched:
                loop = asyncio.get_running_loop()
                watched.linger = loop.call_later(self._linger, self._release, user, watched)

    def _start(self, user: str) -> _Watched:
        userlog = UserLog(self._redis, self._keys, user)
        watched = _Watched(userlog, Feed(userlog, self._wakeups(user), backlog=self._settings.stream_backlog))
        watched.task = asyncio.create_task(self._follow(watched), name=f"feed:{user}")
        self._users[user] = watched
        metrics.WEB_WATCHED_USERS.set(len(self._users))
        return watched

    async def _follow(self, watched: _Watched) -> None:
        """The feed, and the user's new alerts announced on it, until released."""
        user = watched.userlog.user
        async with watched.feed.running():
            self._alerts.follow(user, watched.feed)
            try:
                await watched.stop.wait()
            finally:
                if self._users.get(user) is None:  # not watched again meanwhile, by a feed of its own
                    self._alerts.unfollow(user)

    def _release(self, user: str, watched: _Watched) -> None:
        if watched.viewers == 0 and self._users.get(user) is watched:
            del self._users[user]
            watched.stop.set()
            if watched.task is not None:
                self._ending.add(watched.task)
                watched.task.add_done_callback(self._ending.discard)
            metrics.WEB_WATCHED_USERS.set(len(self._users))

    def end_streams(self) -> None:
        """End every open stream now, told the service is stopping (see Feed.stop)."""
        for watched in self._users.values():
            watched.feed.stop()

    async def aclose(self) -> None:
        """Stop every feed (their streams end, told the service is stopping)."""
        self._alerts.stop()
        self._alerting.cancel()
        await asyncio.wait({self._alerting})
        users, self._users = list(self._users.values()), {}
        for watched in users:
            if watched.linger is not None:
                watched.linger.cancel()
            watched.stop.set()
        tasks = [w.task for w in users if w.task is not None] + list(self._ending)
        if tasks:
            await asyncio.wait(tasks)
        metrics.WEB_WATCHED_USERS.set(0)
