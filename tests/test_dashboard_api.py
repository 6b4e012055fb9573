"""The dashboard's HTTP interface against a real dashboard process, Redis and RabbitMQ."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from redis.asyncio import Redis

from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.collector import Fill
from tests.support.launch import Launcher
from tests.support.ledger import log_ids
from tests.support.readings import body
from tests.support.services import kill_clients
from tests.support.sse import read_events, streams_to
from tests.support.waiting import wait_until


async def test_api_returns_newest_readings_oldest_first_and_pages_with_after(filled: Fill, launch: Launcher) -> None:
    """Without `after` the newest `limit`; with `after`, what follows it; `last_id` is the next cursor."""
    await filled([body(id=f"r{i}") for i in range(30)])
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        newest = (await client.get("/api/readings", params={"limit": 5})).json()
        assert [r["id"] for r in newest["readings"]] == [f"r{i}" for i in range(25, 30)]
        assert newest["last_id"] == newest["readings"][-1]["log_id"]
        first = (await client.get("/api/readings", params={"after": "0-0", "limit": 10})).json()
        assert [r["id"] for r in first["readings"]] == [f"r{i}" for i in range(10)]
        second = (await client.get("/api/readings", params={"after": first["last_id"], "limit": 500})).json()
        assert [r["id"] for r in second["readings"]] == [f"r{i}" for i in range(10, 30)]
        empty = (await client.get("/api/readings", params={"after": second["last_id"]})).json()
        assert empty == {"readings": [], "last_id": second["last_id"]}
        reading = first["readings"][0]
        assert set(reading) == {
            "id",
            "user",
            "station",
            "address",
            "ts",
            "temperature",
            "pressure",
            "humidity",
            "log_id",
        }
        default = (await client.get("/api/readings")).json()
        assert len(default["readings"]) == 30


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 5000"),
        ({"limit": "5001"}, "limit must be a whole number from 1 to 5000"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"after": "yesterday"}, "after must be a log id"),
        ({"after": "1-2-3"}, "after must be a log id"),
    ],
)
async def test_api_bad_parameter_is_400_with_json_error(launch: Launcher, query: dict[str, str], says: str) -> None:
    """A bad parameter is answered 400 with {"error": "..."} naming it."""
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        response = await client.get("/api/readings", params=query)
    assert response.status_code == 400
    assert says in response.json()["error"]


async def test_expired_readings_are_skipped_but_the_cursor_passes_them(
    filled: Fill,
    launch: Launcher,
    redis: Redis,
    keys: Keys,
) -> None:
    """A log entry whose data key expired is left out, and last_id still moves past it."""
    await filled([body(id=f"e{i}") for i in range(4)])
    entries = await redis.xrange(keys.log("user1"))
    await redis.delete(entries[1][1][b"key"], entries[3][1][b"key"])  # as if their TTL ran out
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        page = (await client.get("/api/readings", params={"after": "0-0"})).json()
    assert [r["id"] for r in page["readings"]] == ["e0", "e2"]
    assert page["last_id"] == entries[3][0].decode()


async def test_sse_delivers_new_readings_live_with_log_ids(filled: Fill, launch: Launcher) -> None:
    """A connected client receives each new reading once, as event `reading` with `id:` = log id."""
    dashboard = launch.dashboard("user1")
    reader = asyncio.create_task(read_events(dashboard, 20))
    await wait_until(lambda: streams_to(dashboard, 1), what="the stream to open")
    await filled([body(id=f"live{i}") for i in range(20)])
    events = await reader
    readings = [json.loads(e.data) for e in events]
    assert [r["id"] for r in readings] == [f"live{i}" for i in range(20)]
    assert [e.id for e in events] == [r["log_id"] for r in readings]


@pytest.mark.parametrize("header", [True, False], ids=["Last-Event-ID", "last_id"])
async def test_sse_resumes_after_last_event_id_exactly_once_in_order(
    filled: Fill, launch: Launcher, header: bool
) -> None:
    """Reconnecting with Last-Event-ID (or ?last_id=) replays everything after it, then live ones."""
    await filled([body(id=f"a{i}") for i in range(1500)])
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        page = (await client.get("/api/readings", params={"after": "0-0", "limit": 100})).json()
    reader = asyncio.create_task(read_events(dashboard, 1400 + 50, last_id=page["last_id"], header=header))
    await asyncio.sleep(0.3)
    await filled([body(id=f"b{i}") for i in range(50)])
    events = await reader
    ids = [json.loads(e.data)["id"] for e in events]
    assert ids == [f"a{i}" for i in range(100, 1500)] + [f"b{i}" for i in range(50)]


async def test_sse_rejects_a_bad_last_event_id_and_a_foreign_origin(launch: Launcher) -> None:
    """A malformed Last-Event-ID is 400; a cross-origin EventSource is 403."""
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        bad = await client.get("/events", headers={"Last-Event-ID": "<script>"})
        foreign = await client.get("/events", headers={"Origin": "http://evil.example"})
    assert bad.status_code == 400
    assert "Last-Event-ID must be a log id" in bad.json()["error"]
    assert foreign.status_code == 403


async def test_healthz_is_public_and_reports_the_subscription(launch: Launcher) -> None:
    """/healthz answers 200 with JSON, without a token, when Redis answers and the feed is subscribed."""
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["subscribed"] is True
    assert response.json()["user"] == "user1"


async def test_user2s_readings_never_reach_user1s_api_or_stream(filled: Fill, launch: Launcher) -> None:
    """Readings for user2 are invisible on user1's dashboard, live and in history."""
    dashboard = launch.dashboard("user1")
    reader = asyncio.create_task(read_events(dashboard, 10))
    await wait_until(lambda: streams_to(dashboard, 1), what="the stream to open")
    await filled([body(id=f"u2-{i}", user="user2") for i in range(10)], user="user2")
    await filled([body(id=f"u1-{i}") for i in range(10)])
    events = await reader
    assert {json.loads(e.data)["user"] for e in events} == {"user1"}
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        history = (await client.get("/api/readings", params={"limit": 5000})).json()["readings"]
    assert [r["id"] for r in history] == [f"u1-{i}" for i in range(10)]


async def test_missed_notifications_cost_nothing_after_redis_connection_cuts(
    filled: Fill,
    launch: Launcher,
    redis: Redis,
    settings: Settings,
) -> None:
    """The dashboard's Redis connections killed again and again during a burst: a client gets all of it."""
    dashboard = launch.dashboard("user1")
    await filled([body(id="first")])
    reader = asyncio.create_task(read_events(dashboard, 401, last_id="0-0", timeout=30))
    await asyncio.sleep(0.5)
    killed = 0

    async def cut_repeatedly() -> None:
        nonlocal killed
        while True:
            killed += await kill_clients(redis, "sensorhub-dashboard:user1")
            await asyncio.sleep(0.05)

    cutter = asyncio.create_task(cut_repeatedly())
    for n in range(8):
        await filled([body(id=f"burst{n}-{i}") for i in range(50)])
        await asyncio.sleep(0.15)
    cutter.cancel()
    events = await reader
    assert killed >= 3
    expected = ["first"] + [f"burst{n}-{i}" for n in range(8) for i in range(50)]
    assert [json.loads(e.data)["id"] for e in events] == expected


async def test_sse_resume_from_a_trimmed_id_says_gap_first_then_streams_from_the_oldest(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """Last-Event-ID older than the log's oldest entry (trimmed by TTL): `event: gap` first, then what is left.

    Its data is {"oldest_id", "last_id"} and it has no `id:`, so the browser's cursor stays put. An id
    at the oldest entry is no gap.
    """
    await filled([body(id=f"g{i}") for i in range(10)])
    ids = await log_ids(redis, keys)
    assert await redis.xtrim(keys.log("user1"), minid=ids[4], approximate=False) == 4  # as the collector's MINID
    dashboard = launch.dashboard("user1")
    for resume, expected_gap, first in ((ids[1], True, 4), (ids[4], False, 5)):
        got: list[ServerSentEvent] = []
        headers = {**dashboard.auth, "Last-Event-ID": resume}
        async with (
            httpx.AsyncClient(timeout=15) as client,
            aconnect_sse(client, "GET", f"{dashboard.url}/events", headers=headers) as source,
            asyncio.timeout(15),
        ):
            async for event in source.aiter_sse():
                if event.event in ("gap", "reading"):
                    got.append(event)
                if len(got) == 5 + expected_gap:
                    break
        if expected_gap:
            gap, *got = got
            assert gap.event == "gap"
            assert json.loads(gap.data) == {"oldest_id": ids[4], "last_id": ids[1]}
            assert gap.id == ""
        assert [e.event for e in got] == ["reading"] * 5
        assert [json.loads(e.data)["id"] for e in got] == [f"g{i}" for i in range(first, first + 5)]


async def test_sigterm_ends_an_open_stream_cleanly_before_the_dashboard_exits(launch: Launcher) -> None:
    """A stopping dashboard ends its event streams itself, each with a complete response (the browser
    then resumes elsewhere at once), instead of leaving them to be cut when the server gives up waiting."""
    dashboard = launch.dashboard("user1")
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(5, read=20)) as client,
        client.stream("GET", f"{dashboard.url}/events", headers=dashboard.auth) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.aiter_bytes()
        assert await anext(chunks) == b"retry: 1000\n\n"
        stopping = asyncio.create_task(asyncio.to_thread(dashboard.stop))
        rest = b"".join([chunk async for chunk in chunks])  # RemoteProtocolError if the stream were cut
        await stopping
    assert rest == b""
    assert not dashboard.running
