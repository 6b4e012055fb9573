"""`sensorhub alerts`: evaluates every user's rules against their log, continuously.

Every `poll_seconds` it reads the set of users with rules and, for each, its state (one string
under the user's keys), the readings after the state's cursor, and the user's rules; it runs the
pure step (`engine.advance`) and writes the new state, the alerts and thereby the cursor in one Lua
script, which first checks that the state is still the one it read (compare and set). So a crash at
any point leaves either the old state, and the step is done again with the same result, or the new
one with its alerts logged: after a restart, even after SIGKILL, no alert is repeated or missed. Two
evaluators at once do no harm either: the second one's write is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sensorhub import metrics
from sensorhub.alerting import engine, rules
from sensorhub.alerting.engine import UserState
from sensorhub.alerting.health import Track
from sensorhub.dashboard.userlog import UserLog
from sensorhub.keys import Keys
from sensorhub.polling import Rounds
from sensorhub.redis_client import AnyRedis

log = logging.getLogger("sensorhub.alerts")

ALERT_LOG_MAX = 1000  # alerts kept per user (besides the TTL)
PAGE = 1000  # log entries evaluated per step
SEED = 1000  # newest readings a user's first step learns the stations' rhythm from

# KEYS: state, alert log, newest alert id.  ARGV: the state as read ('' = none), the new state, ttl (s), max alerts,
# then each alert's JSON. Returns the alert ids, or false if the state changed since it was read.
_COMMIT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[2])
local ids = {}
for i = 5, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'alert', ARGV[i])
end
if #ids > 0 then
  local now = redis.call('TIME')
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', (tonumber(now[1]) - tonumber(ARGV[3])) * 1000))
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[3], ids[#ids], 'EX', ARGV[3])
end
return ids
"""


class Evaluator:
    def __init__(
        self, redis: AnyRedis, keys: Keys, ttl_seconds: int, *, offline_after: float = 0, poll_seconds: float = 0.5
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._offline_after = offline_after
        self._script = redis.register_script(_COMMIT)
        self._stop = asyncio.Event()
        self._rounds = Rounds(self._stop, poll_seconds, log)

    def health(self) -> dict[str, bool]:
        return {"redis": self._rounds.redis_ok}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        log.info("alerts started (offline after %s)", f"{self._offline_after:g} s" if self._offline_after else "10x")
        await self._rounds.run(self._every_user)
        log.info("alerts stopped")

    async def _every_user(self) -> bool:
        """One step of each user with rules; True if a user has a full page of readings left (go on at once)."""
        behind = False
        for user in await rules.users(self._redis, self._keys):
            if self._stop.is_set():
                break
            behind |= await self.step(user)
        return behind

    async def step(self, user: str) -> bool:
        """One evaluation of one user's rules; True if more readings wait after this page."""
        state_key = self._keys.alert_state(user)
        user_rules = await rules.Rules(self._redis, self._keys, user).all()
        stored = await self._redis.get(state_key)
        raw = stored.encode() if isinstance(stored, str) else stored
        if not user_rules:
            if raw is not None:
                await self._redis.delete(state_key)  # rules added later start from then, not from here
            return False
        userlog = UserLog(self._redis, self._keys, user)
        state = engine.decode_state(raw) if raw is not None else None
        if state is None:
            state = UserState(cursor=await userlog.last_id())
        if not state.seeded:  # learn each station's rhythm from what is logged, evaluate nothing
            for (heard_ms, _), reading in (await userlog.newest(SEED)).entries:
                state.tracks.setdefault(reading.station, Track()).observe(reading.ts_ms, heard_ms)
            state.seeded = True
        page = await userlog.after(state.cursor, PAGE)
        state.cursor = page.last_id
        readings = [(heard_ms, reading) for (heard_ms, _), reading in page.entries]
        now_ms = int(time.time() * 1000)
        alerts = engine.advance(
            state, user_rules, readings, now_ms, offline_after=self._offline_after, forget_after_ms=self._ttl * 1000
        )
        new_raw = engine.encode(state)
        behind = page.scanned >= PAGE
        if raw is not None and new_raw == raw and not alerts:
            return behind
        if await self._commit(state_key, user, raw or b"", new_raw, alerts) is None:
            log.info("%s: state changed meanwhile (another evaluator?); evaluating again next round", user)
            return False
        for alert in alerts:
            metrics.ALERTS.labels(user, alert.state).inc()
            log.info("%s: %s %s %s at %s", user, alert.state, alert.rule.id, alert.station, alert.ts.isoformat())
        return behind

    async def _commit(
        self, state_key: str, user: str, raw: bytes, new_raw: bytes, alerts: list[engine.Alert]
    ) -> list[bytes] | None:
        keys = [state_key, self._keys.alerts(user), self._keys.alert_newest(user)]
        args: list[bytes | int] = [raw, new_raw, self._ttl, ALERT_LOG_MAX, *map(engine.encode, alerts)]
        reply = await self._script(keys=keys, args=args)  # loads the script itself if Redis lacks it
        return None if reply is None else list(reply)
