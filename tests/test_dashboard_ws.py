"""/ws against a real dashboard process, Redis and RabbitMQ: live, resume by id, restart, gap, access."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import urllib.request
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from sensorhub.dashboard import websocket
from sensorhub.dashboard.auth import TokenAuth
from sensorhub.dashboard.userlog import parse_log_id
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.collector import Fill
from tests.support.launch import Launcher
from tests.support.ledger import confirmed_ids, each_once, log_ids, logged_at_least, stored_log
from tests.support.processes import Dashboard
from tests.support.readings import body
from tests.support.waiting import wait_until
from tests.support.ws import WsClient, frames, open_ws


async def test_ws_delivers_new_readings_live_as_json_text_frames(filled: Fill, launch: Launcher) -> None:
    """A connected client gets each new reading once, in order: {"type": "reading", "id": log id, "reading"}."""
    dashboard = launch.dashboard("user1")
    async with open_ws(dashboard) as ws:
        await filled([body(id=f"live{i}") for i in range(20)])
        got = await frames(ws, 20)
    assert [f["reading"]["id"] for f in got] == [f"live{i}" for i in range(20)]
    assert [f["id"] for f in got] == [f["reading"]["log_id"] for f in got]
    assert set(got[0]) == {"type", "id", "reading"}
    assert set(got[0]["reading"]) == {
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


async def test_ws_resumes_after_last_id_exactly_once_in_order_then_live(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """?last_id= replays every reading after it (over several pages), once, in log order, then live ones."""
    await filled([body(id=f"a{i}") for i in range(1500)])
    ids = await log_ids(redis, keys)
    dashboard = launch.dashboard("user1")
    async with open_ws(dashboard, ids[99]) as ws:
        replayed = await frames(ws, 1400)
        await filled([body(id=f"b{i}") for i in range(50)])
        live = await frames(ws, 50)
    got = replayed + live
    assert [f["reading"]["id"] for f in got] == [f"a{i}" for i in range(100, 1500)] + [f"b{i}" for i in range(50)]
    assert [f["id"] for f in got] == (await log_ids(redis, keys))[100:]


# --- a dashboard restart --------------------------------------------------------------------------


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
async def test_ws_client_loses_and_doubles_nothing_across_a_dashboard_restart(
    settings: Settings, redis: Redis, keys: Keys, launch: Launcher, signal_name: str
) -> None:
    """Dashboard stopped mid-stream, readings stored meanwhile, a new one started on its port: each once, in order."""
    one_user = replace(settings, users=("user1",))
    dashboard = await asyncio.to_thread(launch.dashboard, "user1", settings=one_user)
    client = WsClient(dashboard)
    await client.wait_connected()
    collector = launch.sensorhub("collect", settings=one_user)
    generator = launch.sensorhub("generate", "--count", "6000", "--rate", "1000", "--seed", "9", settings=one_user)
    await wait_until(lambda: len(client.events) >= 500, 60, "500 readings over /ws before the stop")
    await asyncio.to_thread(dashboard.stop if signal_name == "SIGTERM" else dashboard.kill)
    stopped_at = len(client.events)
    down = int(await redis.xlen(keys.log("user1")))
    await logged_at_least(redis, keys, down + 300, collector, timeout=60)  # stored while no dashboard runs
    await asyncio.to_thread(dashboard.start)
    confirmed = await confirmed_ids(generator, 6000, 9)
    await logged_at_least(redis, keys, len(confirmed), collector, timeout=60)
    await wait_until(lambda: len(client.events) >= len(confirmed), 60, "every reading over /ws")
    await asyncio.sleep(0.5)  # a late duplicate would show up now
    await client.close()
    log = await stored_log(redis, keys)
    each_once([reading_id for _, reading_id in log], confirmed, "Redis")
    each_once(client.ids, confirmed, "WebSocket")
    assert client.events == log, "the WebSocket client did not receive the log, in log order"
    assert stopped_at < down + 300
    assert client.connects >= 2


# --- gaps: the resume id was trimmed from the log -------------------------------------------------


async def trimmed_log(filled: Fill, redis: Redis, keys: Keys, n: int = 10, trim: int = 4) -> list[str]:
    """n readings (g0..) logged, then the first `trim` entries trimmed exactly as the collector's XADD MINID does."""
    await filled([body(id=f"g{i}") for i in range(n)])
    ids = await log_ids(redis, keys)
    assert await redis.xtrim(keys.log("user1"), minid=ids[trim], approximate=False) == trim
    return ids


async def test_ws_resume_from_a_trimmed_id_says_gap_first_then_streams_from_the_oldest(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """The first frame is {"type": "gap", "oldest_id", "last_id"}; then every reading left, once, then live."""
    ids = await trimmed_log(filled, redis, keys)
    dashboard = launch.dashboard("user1")
    async with open_ws(dashboard, ids[1]) as ws:
        first = json.loads(await ws.recv())
        replayed = await frames(ws, 6)
        await filled([body(id="after")])
        live = await frames(ws, 1)
    assert first == {"type": "gap", "oldest_id": ids[4], "last_id": ids[1]}
    assert [f["reading"]["id"] for f in replayed + live] == [f"g{i}" for i in range(4, 10)] + ["after"]


@pytest.mark.parametrize("resume", ["oldest", "later", "0-0", "empty log"])
async def test_ws_no_gap_when_the_resume_id_is_not_older_than_the_log(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys, resume: str
) -> None:
    """An id equal to or after the oldest entry, 0-0 (from the start of what is kept), or an empty log: no gap."""
    if resume == "empty log":
        last_id, expected = "1700000000000-0", []
    elif resume == "0-0":
        await trimmed_log(filled, redis, keys)
        last_id, expected = "0-0", [f"g{i}" for i in range(4, 10)]
    else:
        ids = await trimmed_log(filled, redis, keys)
        at = 4 if resume == "oldest" else 6
        last_id, expected = ids[at], [f"g{i}" for i in range(at + 1, 10)]
    dashboard = launch.dashboard("user1")
    async with open_ws(dashboard, last_id) as ws:
        await asyncio.sleep(0.3)  # anything the server says on its own comes first
        await filled([body(id="after")])
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(len(expected) + 1)]
    assert [f["type"] for f in got] == ["reading"] * (len(expected) + 1)
    assert [f["reading"]["id"] for f in got] == [*expected, "after"]


# --- access --------------------------------------------------------------------------------------


async def refused(dashboard: Dashboard, **options: Any) -> int:
    """The HTTP status a /ws handshake is refused with (AssertionError if it is accepted)."""
    with pytest.raises(InvalidStatus) as refusal:
        async with open_ws(dashboard, **options):
            pass
    return refusal.value.response.status_code


async def test_ws_refuses_a_handshake_without_a_valid_token(launch: Launcher) -> None:
    """No token, a wrong one, or user1's token on user2's dashboard: 401 before any upgrade."""
    user1 = launch.dashboard("user1")
    user2 = launch.dashboard("user2")
    assert await refused(user1, additional_headers={}) == 401
    assert await refused(user1, additional_headers={"Authorization": "Bearer nope"}) == 401
    assert await refused(user2, additional_headers=user1.auth) == 401
    user1_cookie = {"Cookie": f"sensorhub_user1={TokenAuth('user1', user1.token).cookie_value}"}
    assert await refused(user2, additional_headers=user1_cookie) == 401
    async with open_ws(user2, additional_headers=user2.auth):
        pass


async def test_ws_refuses_a_foreign_origin_even_with_the_users_cookie(launch: Launcher) -> None:
    """A cross-site page's handshake carries the cookie but its own Origin: 403. The dashboard's own page is let in."""
    dashboard = launch.dashboard("user1")
    cookie = {"Cookie": f"sensorhub_user1={TokenAuth('user1', dashboard.token).cookie_value}"}
    assert await refused(dashboard, additional_headers=cookie, origin="http://evil.example") == 403
    assert await refused(dashboard, origin=f"http://localhost:{dashboard.port}") == 403
    async with open_ws(dashboard, additional_headers=cookie, origin=f"http://127.0.0.1:{dashboard.port}"):
        pass
    async with open_ws(dashboard, params={"token": dashboard.token}, additional_headers={}):
        pass


async def test_ws_rejects_a_bad_last_id_with_400(launch: Launcher) -> None:
    """A malformed ?last_id= is refused before the upgrade, like /events answers 400."""
    dashboard = launch.dashboard("user1")
    assert await refused(dashboard, last_id="<script>") == 400


async def test_an_idle_connection_gets_an_app_level_ping(launch: Launcher) -> None:
    """After PING_SECONDS (15 s) with nothing to send, the server sends {"type": "ping"}: quiet is not dead."""
    dashboard = launch.dashboard("user1")
    async with open_ws(dashboard) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), websocket.PING_SECONDS + 10))
    assert frame == {"type": "ping"}


# --- a client too slow to keep up ----------------------------------------------------------------


def tiny_receive_buffer(port: int) -> socket.socket:
    """A connected socket whose receive window stays small: a client that stops reading blocks the server soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_client_that_stops_reading_is_closed_with_1013_and_resumes_by_id_losing_nothing(
    settings: Settings, filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """Its backlog outgrows SENSORHUB_STREAM_BACKLOG while it does not read: closed 1013; resuming loses nothing."""
    dashboard = launch.dashboard("user1", settings=replace(settings, stream_backlog=3))
    health = f"{dashboard.url}/healthz"
    stalled = open_ws(dashboard, sock=tiny_receive_buffer(dashboard.port), max_queue=1, ping_interval=None)
    received: list[tuple[str, str]] = []
    async with stalled as ws:
        await wait_until(lambda: _clients(health) == 1, what="the client subscribed")
        batches = 0
        # ~10k readings fill the kernel's buffers; from then on the server's sends wait, and the feed's
        # batches pile up for this client until there are more than 3.
        while _clients(health) != 0:
            assert batches < 100, "the server never gave up on a client that does not read"
            await filled([body(id=f"s{batches}-{i}") for i in range(500)])
            batches += 1
        with pytest.raises(ConnectionClosedError) as closed:
            await _read_all(ws, received)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    async with open_ws(dashboard, received[-1][0]) as ws:
        log = await stored_log(redis, keys)
        rest = await frames(ws, len(log) - len(received))
    received += [(f["id"], f["reading"]["id"]) for f in rest]
    assert received == log
    orders = [parse_log_id(log_id) for log_id, _ in received]
    assert all(a < b for a, b in itertools.pairwise(orders))


def _clients(health: str) -> int:
    """Stream clients the dashboard has (its /healthz count)."""
    with urllib.request.urlopen(health, timeout=5) as response:
        return int(json.loads(response.read())["sse_clients"])


async def _read_all(ws: ClientConnection, into: list[tuple[str, str]]) -> None:
    """(log id, reading id) of every reading frame, until the connection closes."""
    async for message in ws:
        frame = json.loads(message)
        into.append((frame["id"], frame["reading"]["id"]))
