"""The feed's promise, driven without a server: replay from a cursor, then live, each reading once in log order."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from sensorhub.dashboard import feed as feed_module
from sensorhub.dashboard.feed import Feed, PubSubFactory
from sensorhub.dashboard.userlog import START, UserLog
from sensorhub.keys import Keys
from sensorhub.pipeline.store import Store
from sensorhub.reading import Reading
from sensorhub.settings import Settings
from tests.support.readings import reading
from tests.support.waiting import wait_until

USER = "user1"


@pytest.fixture(name="store")
def _store(redis: Redis, keys: Keys, settings: Settings) -> Store:
    return Store(redis, keys, settings.ttl_seconds)


@pytest.fixture(name="feed")
async def _feed(redis: Redis, keys: Keys) -> AsyncIterator[Feed]:
    """A running feed for USER, subscribed before the test starts."""
    feed = Feed(UserLog(redis, keys, USER), PubSubFactory(redis, keys.notify(USER)))
    async with feed.running():
        await wait_until(lambda: feed.subscribed and feed.cursor is not None, what="feed subscribed")
        yield feed


async def save(store: Store, prefix: str, n: int) -> None:
    """Store n readings for USER as the collector does, in batches like its own."""
    readings = [msgspec.convert(reading(id=f"{prefix}{i}", user=USER), Reading) for i in range(n)]
    for start in range(0, n, 250):
        await store.save(readings[start : start + 250])


async def log_id_of(redis: Redis, keys: Keys, index: int) -> str:
    """The log id of the index-th entry of USER's log."""
    entries = await redis.xrange(keys.log(USER), count=index + 1)
    return str(entries[index][0].decode())


class Client:
    """One SSE client of a feed: reads whole events off `Feed.stream`, as a browser would."""

    def __init__(self, feed: Feed, resume: str | None) -> None:
        self.chunks = feed.stream(resume)
        self.events: list[dict[str, str]] = []
        self._pending: list[dict[str, str]] = []

    async def start(self) -> None:
        """Read the `retry:` line: from then on the client is subscribed."""
        assert await anext(self.chunks) == b"retry: 1000\n\n"

    async def take(self, n: int, timeout: float = 10) -> list[dict[str, str]]:
        """The next n reading events (id, data)."""
        async with asyncio.timeout(timeout):
            while len(self._pending) < n:
                self._pending += parse(await anext(self.chunks))
        taken, self._pending = self._pending[:n], self._pending[n:]
        self.events += taken
        return taken

    def ids(self) -> list[str]:
        return [json.loads(e["data"])["id"] for e in self.events]


def parse(chunk: bytes) -> list[dict[str, str]]:
    events = []
    for block in chunk.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        if fields.get("event") == "reading":
            events.append(fields)
    return events


async def test_a_connected_client_gets_each_new_reading_once_with_its_log_id(feed: Feed, store: Store) -> None:
    """Live: readings stored after the client connected arrive once, in order, `id:` = their log id."""
    client = Client(feed, None)
    await client.start()
    await save(store, "live", 300)
    events = await client.take(300)
    assert client.ids() == [f"live{i}" for i in range(300)]
    assert [e["id"] for e in events] == [json.loads(e["data"])["log_id"] for e in events]
    assert feed.client_count == 1


async def test_live_readings_come_from_the_notifications_without_reading_the_log_back(
    feed: Feed, store: Store, redis: Redis
) -> None:
    """A notification that goes on from the feed's cursor carries its readings: no XRANGE, no MGET."""
    client = Client(feed, None)
    await client.start()
    before = await redis.info("commandstats")
    for batch in range(10):  # ten notifications, each handled on its own
        await save(store, f"live{batch}-", 30)
        await client.take(30)
    after = await redis.info("commandstats")

    def calls(stats: dict[str, dict[str, int]], command: str) -> int:
        return stats.get(f"cmdstat_{command}", {}).get("calls", 0)

    # At most one read: the safety poll of a feed that heard nothing for 5 s, on a slow machine.
    assert calls(after, "xrange") - calls(before, "xrange") <= 1
    assert calls(after, "mget") - calls(before, "mget") <= 1
    assert client.ids() == [f"live{batch}-{i}" for batch in range(10) for i in range(30)]


async def test_readings_logged_without_a_notification_are_read_from_the_log_in_order(
    feed: Feed, store: Store, redis: Redis, keys: Keys, settings: Settings
) -> None:
    """A notification that does not go on from the cursor (entries came unannounced) is only a hint:
    the feed reads the log, and the quiet readings arrive before the announced ones, each once."""
    client = Client(feed, None)
    await client.start()
    quiet = Store(redis, keys, settings.ttl_seconds, publish=False)
    await save(quiet, "quiet", 20)
    await save(store, "loud", 10)
    await client.take(30)
    assert client.ids() == [f"quiet{i}" for i in range(20)] + [f"loud{i}" for i in range(10)]


async def test_resume_after_an_id_gives_every_later_reading_once_in_order(
    feed: Feed, store: Store, redis: Redis, keys: Keys
) -> None:
    """Resuming after the 100th entry replays the rest of the log (over several pages), then live ones."""
    await save(store, "a", 2500)
    client = Client(feed, await log_id_of(redis, keys, 99))
    await client.start()
    await client.take(2400)
    await save(store, "b", 50)
    await client.take(50)
    assert client.ids() == [f"a{i}" for i in range(100, 2500)] + [f"b{i}" for i in range(50)]


async def test_readings_stored_during_the_replay_are_neither_lost_nor_doubled(
    feed: Feed, store: Store, redis: Redis, keys: Keys
) -> None:
    """Readings that reach the live queue while the replay still reads the log are sent once."""
    await save(store, "old", 1500)
    client = Client(feed, START)
    await client.start()
    await client.take(1000)  # the replay's first page; the client pauses here
    await save(store, "mid", 100)
    newest = await log_id_of(redis, keys, 1599)
    await wait_until(lambda: feed.cursor == newest, what="the feed to broadcast the readings stored mid-replay")
    await client.take(600)  # the replay's last page holds them too
    await save(store, "new", 10)
    await client.take(10)
    expected = [f"old{i}" for i in range(1500)] + [f"mid{i}" for i in range(100)] + [f"new{i}" for i in range(10)]
    assert client.ids() == expected
    assert client._pending == []


async def test_a_client_too_far_behind_is_ended_and_resumes_where_it_stopped(
    feed: Feed, store: Store, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that does not read while batches pile up is ended; resuming from its last id loses nothing."""
    monkeypatch.setattr(feed_module, "CLIENT_QUEUE_LIMIT", 3)
    client = Client(feed, None)
    await client.start()
    for i in range(5):  # one batch each: the feed has read the log before the next reading is stored
        await save(store, f"r{i}-", 1)
        newest = await log_id_of(redis, keys, i)
        await wait_until(lambda: feed.cursor == newest, what=f"the feed to read reading {i}")  # noqa: B023
    assert feed.client_count == 0
    await client.take(3)
    with pytest.raises(StopAsyncIteration):
        await client.take(1)
    again = Client(feed, client.events[-1]["id"])
    await again.start()
    await again.take(2)
    assert client.ids() + again.ids() == [f"r{i}-0" for i in range(5)]


async def test_leaving_running_stops_the_feed_and_ends_its_streams_at_once(redis: Redis, keys: Keys) -> None:
    """Shutdown never waits on a read: the feed stops and every client's stream ends."""
    feed = Feed(UserLog(redis, keys, USER), PubSubFactory(redis, keys.notify(USER)))
    async with feed.running():
        await wait_until(lambda: feed.subscribed, what="feed subscribed")
        client = Client(feed, None)
        await client.start()
        started = time.monotonic()
    assert time.monotonic() - started < 1
    assert not feed.subscribed
    with pytest.raises(StopAsyncIteration):
        await client.take(1)


async def test_stop_ends_every_stream_and_any_opened_after(feed: Feed) -> None:
    """What a server calls as it shuts down: its clients are told at once, not cut when it gives up."""
    client = Client(feed, None)
    await client.start()
    feed.stop()
    with pytest.raises(StopAsyncIteration):
        await client.take(1)
    late = Client(feed, None)
    await late.start()
    with pytest.raises(StopAsyncIteration):
        await late.take(1)


async def test_streams_get_a_keep_alive_only_after_a_quiet_spell(
    redis: Redis, keys: Keys, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy cuts a connection that carries nothing for long: after `heartbeat` s without an event
    every client gets a `: ping` comment (one broadcast for all); readings flowing put it off."""
    monkeypatch.setattr(feed_module, "SAFETY_POLL_SECONDS", 0.2)  # the feed looks at the clock this often when idle
    feed = Feed(UserLog(redis, keys, USER), PubSubFactory(redis, keys.notify(USER)), heartbeat=2.0)
    async with feed.running():
        await wait_until(lambda: feed.subscribed and feed.cursor is not None, what="feed subscribed")
        one, other = Client(feed, None), Client(feed, None)
        await one.start()
        await other.start()
        chunks: list[bytes] = []
        for i in range(30):  # 3 s of readings, never 2 s apart
            await save(store, f"busy{i}-", 1)
            chunks.append(await asyncio.wait_for(anext(one.chunks), 10))
        assert b": ping" not in b"".join(chunks)
        async with asyncio.timeout(10):
            while (chunk := await anext(other.chunks)) != b": ping\n\n":
                assert b"event: reading" in chunk  # the 30 readings, then the keep-alive, to every client
        assert await asyncio.wait_for(anext(one.chunks), 10) == b": ping\n\n"


async def first_items(feed: Feed, resume: str | None, n: int) -> list[object]:
    """The first n items of `Feed.events(resume)`, the stream both transports encode."""
    events = feed.events(resume)
    try:
        return [await asyncio.wait_for(anext(events), 10) for _ in range(n)]
    finally:
        await events.aclose()


async def test_a_resume_id_trimmed_from_the_log_is_told_as_a_gap_before_the_rest(
    feed: Feed, store: Store, redis: Redis, keys: Keys
) -> None:
    """OPENED, then Gap(oldest entry, the resume id), then what is left; at the oldest entry there is no gap."""
    await save(store, "t", 10)
    ids = [await log_id_of(redis, keys, i) for i in range(10)]
    await redis.xtrim(keys.log(USER), minid=ids[4], approximate=False)
    opened, gap, batch = await first_items(feed, ids[1], 3)
    assert opened is feed_module.OPENED
    assert gap == feed_module.Gap(oldest_id=ids[4], last_id=ids[1])
    assert isinstance(batch, list)
    assert [e.reading.id for e in batch] == [f"t{i}" for i in range(4, 10)]
    _, batch = await first_items(feed, ids[4], 2)
    assert isinstance(batch, list)
    assert [e.reading.id for e in batch] == [f"t{i}" for i in range(5, 10)]


@pytest.mark.parametrize(("when", "first"), [("before", 6), ("after", 4)])
async def test_a_trim_racing_the_replays_first_read_is_always_told(
    feed: Feed, store: Store, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch, when: str, first: int
) -> None:
    """The log trimmed past the resume id just before or just after the replay's first read: a gap either way.

    Its oldest_id is the first reading the client then gets: nothing between the two ids reaches it.
    """
    await save(store, "t", 10)
    ids = [await log_id_of(redis, keys, i) for i in range(10)]
    read = UserLog.after

    async def racing_trim(self: UserLog, after: str, limit: int) -> object:
        if when == "before":
            await redis.xtrim(keys.log(USER), minid=ids[6], approximate=False)
        page = await read(self, after, limit)
        if when == "after":
            await redis.xtrim(keys.log(USER), minid=ids[6], approximate=False)
        return page

    monkeypatch.setattr(UserLog, "after", racing_trim)
    _, gap, batch = await first_items(feed, ids[3], 3)
    assert gap == feed_module.Gap(oldest_id=ids[first], last_id=ids[3])
    assert isinstance(batch, list)
    assert [e.reading.id for e in batch] == [f"t{i}" for i in range(first, 10)]


async def test_a_client_too_far_behind_is_told_at_once_through_dropped(
    feed: Feed, store: Store, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dropped` is set when the backlog overflows, while the End still waits behind the untaken batches."""
    monkeypatch.setattr(feed_module, "CLIENT_QUEUE_LIMIT", 2)
    dropped = asyncio.Event()
    events = feed.events(None, dropped)
    assert await anext(events) is feed_module.OPENED
    for i in range(3):
        await save(store, f"r{i}-", 1)
        newest = await log_id_of(redis, keys, i)
        await wait_until(lambda: feed.cursor == newest, what=f"the feed to read reading {i}")  # noqa: B023
    assert dropped.is_set()
    rest = [await anext(events) for _ in range(3)]
    assert rest[-1] is feed_module.End.TOO_SLOW
    await events.aclose()
