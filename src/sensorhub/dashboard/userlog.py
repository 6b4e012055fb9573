"""Reading one user's log: the stream of data keys the collector appends, and the readings behind it.

Stream entry ids are the cursor everything resumes from (the page, the SSE `id:`, the API's `after`):
they are assigned by Redis, so two dashboard replicas give a browser the same ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from sensorhub.keys import Keys
from sensorhub.reading import Reading
from sensorhub.redis_client import AnyRedis, text

LOG_ID = re.compile(r"\A(\d{1,20})(?:-(\d{1,20}))?\Z")
START = "0-0"


def parse_log_id(text: str) -> tuple[int, int]:
    """'<ms>-<seq>' (or '<ms>') as a comparable pair; ValueError if it is not a stream id."""
    match = LOG_ID.match(text)
    if match is None:
        raise ValueError(f"not a log id: {text!r} (expected <milliseconds>-<sequence>)")
    return int(match[1]), int(match[2] or 0)


class ReadingWithId(Reading, frozen=True):
    log_id: str


@dataclass(frozen=True)
class Page:
    entries: list[tuple[tuple[int, int], ReadingWithId]]
    last_id: str  # resume after this: it passes entries whose data expired, too
    scanned: int  # log entries read, expired ones included
    first_id: str | None = None  # the first log entry read, expired or not


_decode_stored = msgspec.json.Decoder(Reading).decode


class Announced(msgspec.Struct):
    """A notification of the collector's: the entries it just appended to the log, and the one before them."""

    last_id: str
    after: str | None = None
    ids: list[str] = []
    readings: list[Reading] = []


_decode_announced = msgspec.json.Decoder(Announced).decode


class UserLog:
    def __init__(self, redis: AnyRedis, keys: Keys, user: str, *, fetch_batch: int = 1000) -> None:
        self._redis = redis
        self._log = keys.log(user)
        self.user = user
        self._fetch_batch = fetch_batch

    async def last_id(self) -> str:
        newest = _raw(await self._redis.xrevrange(self._log, count=1))
        return text(newest[0][0]) if newest else START

    async def after(self, after: str, limit: int) -> Page:
        """Up to `limit` entries after `after`, oldest first."""
        raw = _raw(await self._redis.xrange(self._log, min=f"({after}", count=limit))
        return await self._resolve(raw, after)

    async def newest(self, limit: int) -> Page:
        """The newest `limit` entries, oldest first."""
        raw = list(reversed(_raw(await self._redis.xrevrange(self._log, count=limit))))
        return await self._resolve(raw, START)

    def announced(self, notification: bytes, cursor: str) -> Page | None:
        """What a notification adds after `cursor`, taken from the notification itself: a page of
        its entries if it goes on exactly from `cursor` (or an empty one if it is older), else None
        (it is not ours to trust, or entries came in between unannounced): then read the log.
        """
        try:
            told = _decode_announced(notification)
            if parse_log_id(told.last_id) <= parse_log_id(cursor):
                return Page([], cursor, 0)  # announced before this feed took its cursor: read already
            if told.after != cursor or not told.ids or len(told.ids) != len(told.readings):
                return None
            entries = [
                _entry(log_id, reading)
                for log_id, reading in zip(told.ids, told.readings, strict=True)
                if reading.user == self.user
            ]
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
            return None
        if told.ids[-1] != told.last_id:
            return None
        return Page(entries, told.last_id, len(told.ids), told.ids[0])

    async def trimmed_before(self, after: str, first_read: str | None) -> str | None:
        """Where the log now starts, if `after` is older than its oldest entry (trimmed by TTL); else None.

        An id at or after the oldest entry is no gap, nor is an empty log, nor `0-0` (from the start
        of what is kept). `first_read` is the first entry a read after `after` found just before; if
        a trim has since passed it, the stream goes on from there, so it is what the client is told.
        """
        if after == START:
            return None
        first = _raw(await self._redis.xrange(self._log, count=1))
        if not first:
            return None
        oldest = text(first[0][0])
        if first_read is not None and parse_log_id(first_read) < parse_log_id(oldest):
            oldest = first_read
        return oldest if parse_log_id(after) < parse_log_id(oldest) else None

    async def _resolve(self, raw: _Entries, after: str) -> Page:
        entries: list[tuple[tuple[int, int], ReadingWithId]] = []
        for start in range(0, len(raw), self._fetch_batch):
            chunk = raw[start : start + self._fetch_batch]
            values = await self._redis.mget([fields.get(b"key", b"") for _, fields in chunk])
            for (entry_id, _), value in zip(chunk, values, strict=True):
                if value is None:
                    continue  # the reading expired (TTL) before its log entry was trimmed
                try:
                    reading = _decode_stored(value)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    continue
                if reading.user != self.user:
                    continue
                entries.append(_entry(text(entry_id), reading))
        return Page(entries, text(raw[-1][0]) if raw else after, len(raw), text(raw[0][0]) if raw else None)


_Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _entry(log_id: str, reading: Reading) -> tuple[tuple[int, int], ReadingWithId]:
    """A page entry: the reading with its log id, and that id as a comparable pair."""
    return parse_log_id(log_id), ReadingWithId(**msgspec.structs.asdict(reading), log_id=log_id)


def _raw(reply: Any) -> _Entries:
    return cast(_Entries, reply or [])
