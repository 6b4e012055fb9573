"""`sensorhub web` and `sensorhub token` against real Redis and RabbitMQ: every user's dashboard from one process.

Each test starts its own `sensorhub web` on a free port; tokens come from the `sensorhub token`
command, as an operator makes them.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from playwright.async_api import expect
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sensorhub import supervisor
from sensorhub.dashboard import tokens
from sensorhub.keys import Keys
from sensorhub.settings import SOURCES, Settings
from tests.support.browser import Pages, row_ids
from tests.support.collector import Fill
from tests.support.launch import Launcher
from tests.support.ledger import log_ids
from tests.support.processes import in_foreground, printed_urls, run, wait_healthy
from tests.support.readings import body
from tests.support.services import free_port, kill_clients
from tests.support.sse import SseClient, read_events
from tests.support.waiting import wait_until
from tests.support.web import SECRET, WebUser, add_token
from tests.support.ws import frames, open_ws

# --- tokens --------------------------------------------------------------------------------------


async def test_token_add_list_revoke_and_only_a_keyed_hash_is_stored(
    settings: Settings, redis: Redis, keys: Keys
) -> None:
    """add prints the id and the token as its last word; list shows id, user, label, created, never the
    token; Redis holds neither the token nor the secret; revoke forgets it; a wrong id is one line, exit 1."""
    settings = replace(settings, token_secret=SECRET)
    phone_id, phone, added = add_token(settings, "user1", "phone")
    laptop_id, laptop, _ = add_token(settings, "user1", "laptop")
    other_id, _, _ = add_token(settings, "user2")
    assert phone_id in added
    assert added.split()[-1] == phone
    assert phone.startswith(phone_id + ".")
    assert len({phone, laptop}) == 2

    listed = run("token", "list", settings=settings)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        [phone_id, "user1", "phone"],
        [laptop_id, "user1", "laptop"],
        [other_id, "user2", "-"],
    ]
    assert all(line.split()[3].endswith("Z") for line in lines)
    assert phone not in listed.stdout
    assert laptop not in listed.stdout
    only = run("token", "list", "--user", "user2", settings=settings)
    assert [line.split()[0] for line in only.stdout.splitlines()] == [other_id]

    stored = b"".join(v for v in (await redis.hgetall(keys.tokens("user1"))).values())
    assert phone.split(".")[1].encode() not in stored
    assert SECRET.encode() not in stored
    assert tokens.keyed_hash(SECRET, phone).encode() in stored

    revoked = run("token", "revoke", "--user", "user1", "--id", phone_id, settings=settings)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked {phone_id} of user1")
    after = run("token", "list", "--user", "user1", settings=settings).stdout
    assert phone_id not in after
    assert laptop_id in after
    again = run("token", "revoke", "--user", "user1", "--id", phone_id, settings=settings)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1
    assert "no token" in again.stderr
    bad = run("token", "revoke", "--user", "user1", "--id", "nope", settings=settings)
    assert bad.returncode == 2
    assert "--id must be a token id" in bad.stderr


def test_token_commands_and_web_need_the_secret(settings: Settings) -> None:
    """Without SENSORHUB_TOKEN_SECRET: one line naming it, exit 2, nothing stored."""
    for args in (("token", "add", "--user", "user1"), ("web", "--port", "1")):
        done = run(*args, settings=replace(settings, token_secret=""))
        assert done.returncode == 2, done
        assert done.stderr.strip().endswith(
            "SENSORHUB_TOKEN_SECRET must be set (any long random string; keep it the same everywhere)"
        )
        assert "Traceback" not in done.stderr


# --- access --------------------------------------------------------------------------------------


async def _status(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    async with client.stream("GET", url, headers=headers) as response:
        return response.status_code


async def _ws_status(user: WebUser, headers: dict[str, str]) -> int:
    try:
        async with open_ws(user, additional_headers=headers):
            return 101
    except InvalidStatus as refusal:
        return refusal.response.status_code


async def test_a_users_token_opens_nothing_of_any_other_user(launch: Launcher) -> None:
    """user1's token (bearer, ?token= or its cookie) on user2's page, API, /events and /ws: 401; on user1's: open."""
    web = launch.web()
    user1, user2 = web.user("user1"), web.user("user2")
    as_user1 = {"Authorization": f"Bearer {user1.token}"}
    cookie = {"Cookie": f"sensorhub_web_user2={user1.token}; sensorhub_web_user1={user1.token}"}
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/", "/api/readings", "/api/stations", "/api/rules", "/api/alerts", "/events"):
            assert await _status(client, f"{user2.url}{path}", as_user1) == 401, path
            assert await _status(client, f"{user2.url}{path}", cookie) == 401, path
            assert await _status(client, f"{user2.url}{path}?token={user1.token}", {}) == 401, path
            assert await _status(client, f"{user2.url}{path}", {}) == 401, path
            assert await _status(client, f"{user1.url}{path}", as_user1) == 200, path
            assert await _status(client, f"{user2.url}{path}", user2.auth) == 200, path
        page = await client.get(f"{user2.url}/", headers=as_user1)
        assert "sensorhub token add --user user2" in page.text
        login = await client.get(f"{user1.url}/?token={user1.token}")
        assert login.status_code == 303
        assert login.headers["location"] == f"{user1.url}/"
        assert f"sensorhub_web_user1={user1.token}" in login.headers["set-cookie"]
        assert "Path=/u/user1/" in login.headers["set-cookie"]
        assert "HttpOnly" in login.headers["set-cookie"]
        assert (await client.get(f"{web.url}/healthz")).status_code == 200
        assert (await client.get(f"{web.url}/metrics")).status_code == 200
    assert await _ws_status(user2, as_user1) == 401
    assert await _ws_status(user2, {}) == 401
    assert await _ws_status(user1, as_user1) == 101
    assert await _ws_status(user1, {**as_user1, "Origin": "http://evil.example"}) == 403


async def test_a_revoked_tokens_open_streams_close_within_a_second(launch: Launcher, redis: Redis, keys: Keys) -> None:
    """Revoking the token ends its open SSE stream and WebSocket (close 1008) within 1 s; another token's stream
    of the same user goes on, and the revoked one gets 401 after."""
    web = launch.web()
    phone, laptop = web.user("user1", "phone"), web.user("user1", "laptop")
    ended: dict[str, float] = {}

    async def sse(user: WebUser, name: str) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client,
            aconnect_sse(client, "GET", f"{user.url}/events", headers=user.auth) as source,
        ):
            async for _ in source.aiter_sse():
                pass
        ended[name] = time.monotonic()

    close_code: list[int | None] = []

    async def ws() -> None:
        async with open_ws(phone) as socket:
            try:
                while True:
                    await socket.recv()
            except ConnectionClosed as closed:
                close_code.append(closed.rcvd.code if closed.rcvd else None)
        ended["ws"] = time.monotonic()

    tasks = [
        asyncio.create_task(sse(phone, "sse")),
        asyncio.create_task(sse(laptop, "other")),
        asyncio.create_task(ws()),
    ]
    await wait_until(lambda: web.health()["stream_clients"] == 3, what="3 streams open")
    assert await tokens.revoke(redis, keys, "user1", phone.token_id)
    revoked_at = time.monotonic()
    await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), 5)
    assert ended["sse"] - revoked_at <= 1.0, ended["sse"] - revoked_at
    assert ended["ws"] - revoked_at <= 1.0, ended["ws"] - revoked_at
    assert close_code == [1008]
    assert not tasks[1].done()
    assert web.health()["stream_clients"] == 1
    async with httpx.AsyncClient(timeout=10) as client:
        assert await _status(client, f"{phone.url}/events", phone.auth) == 401
        assert await _status(client, f"{laptop.url}/api/readings", laptop.auth) == 200
    tasks[1].cancel()
    await asyncio.gather(tasks[1], return_exceptions=True)


# --- the streams ---------------------------------------------------------------------------------


async def test_events_resume_exactly_under_the_prefix(filled: Fill, launch: Launcher, redis: Redis, keys: Keys) -> None:
    """/u/user1/events with Last-Event-ID (or ?last_id=) replays every reading after it once, in order, then live;
    /u/user1/api/readings pages like the per-user API."""
    await filled([body(id=f"a{i}") for i in range(30)])
    ids = await log_ids(redis, keys)
    user1 = launch.web().user("user1")
    for header in (True, False):
        events = await read_events(user1, 20, last_id=ids[9], header=header)  # type: ignore[arg-type]
        assert [e.id for e in events] == ids[10:30]
    async with httpx.AsyncClient(timeout=10) as client:
        page = (await client.get(f"{user1.url}/api/readings", params={"after": ids[24]}, headers=user1.auth)).json()
    assert [r["id"] for r in page["readings"]] == [f"a{i}" for i in range(25, 30)]
    assert page["last_id"] == ids[29]

    async with open_ws(user1, ids[27]) as ws:  # type: ignore[arg-type]
        replayed = await frames(ws, 2)
        await filled([body(id="live")])
        live = await frames(ws, 1)
    assert [f["reading"]["id"] for f in replayed + live] == ["a28", "a29", "live"]


async def test_a_user_is_held_only_while_watched_and_a_new_user_is_served_at_once(
    filled: Fill, launch: Launcher
) -> None:
    """No viewer, no per-user feed; the first viewer starts it, the last one leaving ends it. A user the service
    never heard of, who gets data and a token, is streamed at once, without a restart."""
    web = launch.web()
    assert web.health()["watched_users"] == 0
    user1 = web.user("user1")
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{user1.url}/api/readings", headers=user1.auth)).status_code == 200
    await wait_until(lambda: web.health()["watched_users"] == 0, what="user1 let go after its request")

    newcomer = web.user("newcomer7")
    reader = asyncio.create_task(read_events(newcomer, 3))  # type: ignore[arg-type]
    await wait_until(lambda: web.health() == {**web.health(), "watched_users": 1, "stream_clients": 1})
    await filled([body(id=f"n{i}", user="newcomer7") for i in range(3)], user="newcomer7")
    assert [e.data.count('"newcomer7"') for e in await asyncio.wait_for(reader, 15)] == [1, 1, 1]
    await wait_until(lambda: web.health()["watched_users"] == 0, what="newcomer7 let go after its viewer left")


async def test_streams_go_on_after_the_shared_subscription_connection_is_killed(
    filled: Fill, launch: Launcher, redis: Redis
) -> None:
    """Every watched user's notifications share one Redis connection; when it dies, each user's stream goes on
    with every reading once, in order."""
    web = launch.web()
    user1, user2 = web.user("user1"), web.user("user2")
    clients = [SseClient(user1), SseClient(user2)]  # type: ignore[arg-type]
    for client in clients:
        await client.wait_connected()
    subscriptions = [c for c in await redis.client_list() if c.get("name") == "sensorhub-web-subscriptions"]
    assert len([c for c in subscriptions if int(c.get("sub", 0)) == 2]) == 1  # both channels, one connection
    await filled([body(id=f"before{i}") for i in range(3)])
    await filled([body(id=f"before{i}", user="user2") for i in range(3)], user="user2")
    assert await kill_clients(redis, "sensorhub-web-subscriptions") >= 1
    await filled([body(id=f"after{i}") for i in range(3)])
    await filled([body(id=f"after{i}", user="user2") for i in range(3)], user="user2")
    expected = [f"before{i}" for i in range(3)] + [f"after{i}" for i in range(3)]
    try:
        for client in clients:
            await wait_until(lambda c=client: c.ids == expected, 15, f"the readings of {client.dashboard.user}")
    finally:
        for client in clients:
            await client.close()


async def test_a_users_new_alerts_reach_their_stream_and_no_other(launch: Launcher, redis: Redis, keys: Keys) -> None:
    """An alert logged for user1 comes on user1's /u/user1/events as an `alert` event, never on user2's."""
    web = launch.web()
    user1, user2 = web.user("user1"), web.user("user2")
    seen: dict[str, list[str]] = {"user1": [], "user2": []}

    async def listen(user: WebUser) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client,
            aconnect_sse(client, "GET", f"{user.url}/events", headers=user.auth) as source,
        ):
            async for event in source.aiter_sse():
                if event.event == "alert":
                    seen[user.user].append(json.loads(event.data)["rule"])

    listeners = [asyncio.create_task(listen(user1)), asyncio.create_task(listen(user2))]
    try:
        await wait_until(lambda: web.health()["stream_clients"] == 2, what="both streams open")
        alert = {"type": "alert", "user": "user1", "station": "s1", "rule": "hot", "state": "firing"}

        # The follower announces alerts logged after it started; log until one comes through, as
        # `sensorhub alerts` logs them: the entry, and its id as the user's newest.
        async def logged_and_seen() -> bool:
            alert_id = await redis.xadd(keys.alerts("user1"), {"alert": json.dumps(alert)})
            await redis.set(keys.alert_newest("user1"), alert_id)
            return bool(seen["user1"])

        await wait_until(logged_and_seen, 15, "user1's alert", 0.3)
    finally:
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
    assert set(seen["user1"]) == {"hot"}
    assert seen["user2"] == []


# --- the page ------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "transport=ws"])
async def test_the_page_under_u_user1_goes_live_in_chromium(
    filled: Fill, launch: Launcher, pages: Pages, redis: Redis, keys: Keys, query: str
) -> None:
    """The printed URL /u/user1/?token= trades the token for a cookie, renders, and streams new readings into
    the table over SSE (or ?transport=ws) from paths under the prefix."""
    await filled([body(id=f"old{i}") for i in range(3)])
    user1 = launch.web().user("user1")
    requested: list[str] = []
    sockets: list[str] = []

    def watch(p: Any) -> None:
        p.on("request", lambda r: requested.append(r.url))
        p.on("websocket", lambda ws: sockets.append(ws.url))

    page = await pages.open(user1, query, before=watch)  # type: ignore[arg-type]
    await filled([body(id=f"new{i}") for i in range(5)])
    ids = await log_ids(redis, keys)
    await wait_until(lambda: _rows_are(page, ids), what="all 8 readings in the table")
    assert await page.locator("#user").inner_text() == "user1"
    if query:
        assert sockets, "no WebSocket opened"
        assert all(url.startswith(f"ws://127.0.0.1:{user1.port}/u/user1/ws?") for url in sockets), sockets
    else:
        assert any(url.startswith(f"{user1.url}/events?") for url in requested), requested
    assert all(url.startswith((f"{user1.url}/", f"http://127.0.0.1:{user1.port}/static/")) for url in requested)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert pages.errors == []


async def _rows_are(page: Any, ids: list[str]) -> bool:
    return await row_ids(page) == list(reversed(ids))


# --- make run ------------------------------------------------------------------------------------


def test_run_starts_web_and_plans_one_url_per_user() -> None:
    """`sensorhub run` starts `sensorhub web` (port 8080) beside the per-user dashboards and prints one
    /u/<user>/?token= URL per user, each with a token made for the run; only web gets the token secret."""
    settings = Settings(users=("user1", "user2"), token_secret="key of the run")
    children, lines = supervisor.plan(settings, 10.0, 9000)
    web = next(c for c in children if c.name == "web")
    assert web.args == ["web", "--port", "8080"]
    assert web.env[SOURCES["token_secret"].env] == "key of the run"
    assert [c.name for c in children if c.name.startswith("dashboard:")] == ["dashboard:user1", "dashboard:user2"]
    shown = [line for line in lines if "/u/" in line]
    assert [line.split()[0] for line in shown] == ["user1", "user2"]
    assert shown[0].split()[1].startswith("http://127.0.0.1:8080/u/user1/?token=tk_")
    assert supervisor.environment(settings)[SOURCES["token_secret"].env] == ""


def test_sensorhub_run_prints_a_working_web_url_per_user_and_revokes_its_tokens_after(
    settings: Settings, keys: Keys
) -> None:
    """Each printed /u/<user>/?token= URL opens that user's page (and not the other's); the run's tokens are
    stored only hashed, and revoked when it stops."""
    web_port = free_port()
    args = ["run", "--first-port", str(free_port()), "--web-port", str(web_port), "--rate", "1"]
    run_settings = replace(settings, users=("user1", "user2"), token_secret=SECRET)
    redis = SyncRedis.from_url(settings.redis_url)
    with in_foreground(run_settings, *args) as process:
        urls = printed_urls(process, r"  (user[12]) +(http://127\.0\.0\.1:\d+/u/\S+)", 2, "the web URLs")
        assert urls["user1"].startswith(f"http://127.0.0.1:{web_port}/u/user1/?token=tk_")
        token2 = urls["user2"].split("?token=")[1]
        wait_healthy(f"http://127.0.0.1:{web_port}")
        with httpx.Client(timeout=10) as client:
            page = client.get(urls["user1"], follow_redirects=True)
            assert page.status_code == 200
            assert "sensorhub — user1" in page.text
        with httpx.Client(timeout=10) as client:  # no cookie from user1's page
            foreign = client.get(f"http://127.0.0.1:{web_port}/u/user1/", headers={"Authorization": f"Bearer {token2}"})
            assert foreign.status_code == 401
        assert len(redis.hgetall(keys.tokens("user1"))) == 1
    assert redis.hgetall(keys.tokens("user1")) == {}
    assert redis.hgetall(keys.tokens("user2")) == {}
    redis.close()
