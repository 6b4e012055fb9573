"""`sensorhub alerts` against real RabbitMQ, Redis, collector and dashboards: rules, firing, hysteresis,
crashes, offline stations, and one user's alerts never reaching another."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from redis.asyncio import Redis
from standardwebhooks import Webhook

from sensorhub.alerting import engine, rules
from sensorhub.alerting.engine import UserState
from sensorhub.dashboard.feed import Notice
from sensorhub.delivery import endpoints
from sensorhub.keys import Keys
from sensorhub.reading import parse
from sensorhub.settings import Settings
from tests.support.collector import Fill
from tests.support.launch import Launcher
from tests.support.processes import Dashboard, Process, alive
from tests.support.readings import body
from tests.support.services import free_port
from tests.support.waiting import wait_until
from tests.support.webhooks import Received, Receiver
from tests.support.ws import frames, open_ws

HOT = {
    "id": "hot", "station": "*", "kind": "above", "quantity": "temperature",
    "value": 30, "clear": 28, "for_seconds": 10,
}  # fmt: skip


def _evaluator(launch: Launcher, *flags: str) -> Process:
    return launch.sensorhub("alerts", "--http-port", str(free_port()), *flags)


async def test_alerts_healthz_says_whether_redis_answers(launch: Launcher, settings: Settings) -> None:
    """`sensorhub alerts --http-port`: 200 with `"redis": true` once a round reached Redis; 503 with
    `"redis": false` while it cannot (and it keeps running, waiting for Redis)."""
    await _alerts_healthz_says(launch, settings, 200)
    await _alerts_healthz_says(launch, replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"), 503)


async def _alerts_healthz_says(launch: Launcher, settings: Settings, status: int) -> None:
    port = free_port()
    evaluator = launch.sensorhub("alerts", "--http-port", str(port), settings=settings)
    await wait_until(lambda: alive(evaluator) and _healthz_says(port, status), 15, f"/healthz to say {status}")
    assert alive(evaluator)


async def _healthz_says(port: int, status: int) -> bool:
    """True if the process's /healthz answers `status`, with `"redis"` true exactly when that is 200."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
    except httpx.TransportError:
        return False
    return response.status_code == status and response.json()["redis"] is (status == 200)


def _temps(start: datetime, temps: list[float], user: str = "user1", station: str = "post-01") -> list[bytes]:
    """One reading a second of reading time (`ts`), published at once."""
    return [
        body(user=user, station=station, ts=(start + timedelta(seconds=i)).isoformat(), temperature=t)
        for i, t in enumerate(temps)
    ]


async def _alerts(redis: Redis, keys: Keys, user: str = "user1") -> list[dict[str, Any]]:
    return [json.loads(fields[b"alert"]) for _, fields in await redis.xrange(keys.alerts(user))]


async def _at_least(n: int, redis: Redis, keys: Keys, user: str = "user1") -> list[dict[str, Any]] | None:
    """The user's alerts once there are `n` or more (for wait_until)."""
    alerts = await _alerts(redis, keys, user)
    return alerts if len(alerts) >= n else None


def _brief(alerts: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(a["state"], a["value"]) for a in alerts]


async def _caught_up(redis: Redis, keys: Keys, user: str = "user1") -> bool:
    """True once `sensorhub alerts` has evaluated every reading in the user's log."""
    raw = await redis.get(keys.alert_state(user))
    newest = await redis.xrevrange(keys.log(user), count=1)
    state = engine.decode_state(raw) if raw is not None else None
    return state is not None and bool(newest) and state.cursor == newest[0][0].decode()


async def _add_rule(dashboard: Dashboard, rule: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        response = await client.post("/api/rules", json=rule)
    assert response.status_code == 201, response.text
    added: dict[str, Any] = response.json()
    return added


async def test_above_30_for_10s_fires_once_does_not_flap_and_resolves_below_clear(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """The issue's rule: one `firing` once 31 has held for 10 s of reading time; 29 -> 31 -> 29.5 -> 31
    neither fires again nor resolves; 27 resolves. The page's API and SSE stream say the same."""
    dashboard = launch.dashboard("user1")
    await _add_rule(dashboard, HOT)
    evaluator = _evaluator(launch)
    start = datetime.now(UTC) - timedelta(minutes=5)
    await filled(_temps(start, [29]))
    await wait_until(lambda: _caught_up(redis, keys), what="evaluator caught up")
    async with (
        httpx.AsyncClient(timeout=30) as client,
        aconnect_sse(client, "GET", f"{dashboard.url}/events", headers=dashboard.auth) as source,
    ):
        events = source.aiter_sse()
        assert (await anext(events)).retry is not None  # connected
        await filled(_temps(start + timedelta(seconds=1), [31] * 10))  # 31 held for 9 s: not yet
        await wait_until(lambda: _caught_up(redis, keys), what="evaluator caught up")
        assert await _alerts(redis, keys) == []
        await filled(_temps(start + timedelta(seconds=11), [31]))  # 10 s
        firing = await wait_until(lambda: _alerts(redis, keys), what="an alert")
        assert _brief(firing) == [("firing", 31)]
        assert firing[0]["rule"] == HOT
        assert firing[0]["station"] == "post-01"
        assert firing[0]["quantity"] == "temperature"
        assert datetime.fromisoformat(firing[0]["ts"]) == start + timedelta(seconds=11)
        sse = await _next_alert(events)
        assert json.loads(sse.data)["state"] == "firing"

        await filled(_temps(start + timedelta(seconds=12), [29, 31, 29.5, 31, 28]))
        await wait_until(lambda: _caught_up(redis, keys), what="evaluator caught up")
        assert _brief(await _alerts(redis, keys)) == [("firing", 31)]
        await filled(_temps(start + timedelta(seconds=17), [27]))
        resolved = await wait_until(lambda: _at_least(2, redis, keys), what="resolved")
        assert _brief(resolved) == [("firing", 31), ("resolved", 27)]
        sse = await _next_alert(events)
        assert json.loads(sse.data)["state"] == "resolved"

    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        api = (await client.get("/api/alerts")).json()
    assert [(a["state"], a["value"]) for a in api["alerts"]] == [("firing", 31), ("resolved", 27)]
    assert api["firing"] == []
    assert all(a["id"] and a["type"] == "alert" for a in api["alerts"])
    assert alive(evaluator)


async def _next_alert(events: AsyncIterator[ServerSentEvent]) -> ServerSentEvent:
    """The next `alert` event of an SSE stream (readings in between skipped)."""
    async with asyncio.timeout(15):
        async for event in events:
            if event.event == "alert":
                return event
    raise AssertionError("the stream ended without an alert")


async def test_alerts_reach_websocket_clients_as_alert_frames(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    dashboard = launch.dashboard("user1")
    await _add_rule(dashboard, {**HOT, "for_seconds": 0})
    _evaluator(launch)
    start = datetime.now(UTC) - timedelta(minutes=1)
    async with open_ws(dashboard) as ws:
        await filled(_temps(start, [35]))
        (frame,) = await frames(ws, 1, kind="alert")
    (logged,) = await _alerts(redis, keys)
    assert frame == {"type": "alert", "id": frame["id"], **logged, "acknowledged": False}
    assert frame["state"] == "firing"


async def test_evaluator_killed_again_and_again_neither_repeats_nor_misses_an_alert(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """SIGKILLed while firing, and at random moments while readings cross the limits, then restarted:
    the alert log is exactly what one evaluation of all the readings in order gives."""
    dashboard = launch.dashboard("user1")
    await _add_rule(dashboard, HOT)
    evaluator = _evaluator(launch)
    start = datetime.now(UTC) - timedelta(minutes=10)
    await filled(_temps(start, [20]))
    await wait_until(lambda: _caught_up(redis, keys), what="evaluator caught up")
    await filled(_temps(start + timedelta(seconds=1), [31] * 11))
    await wait_until(lambda: _alerts(redis, keys), what="firing")
    evaluator.kill()  # while firing
    rng = random.Random(12)
    temps: list[float] = []
    for _ in range(6):  # hot for long enough, hovering, then cold: a firing and a resolved each, at random places
        temps += [rng.choice([27, 29.5])] + [rng.choice([31, 33]) for _ in range(rng.randint(11, 14))]
        temps += [rng.choice([29, 29.5, 30.5, 31]) for _ in range(rng.randint(2, 6))] + [27] * rng.randint(1, 3)
    sent = [20.0, *[31.0] * 11]
    for offset in range(0, len(temps), 10):
        chunk = temps[offset : offset + 10]
        await filled(_temps(start + timedelta(seconds=len(sent)), chunk))
        sent += chunk
        if not evaluator.running:
            evaluator.start()
        await asyncio.sleep(rng.uniform(0.2, 1.5))  # kill it at a random point: starting, evaluating, idle
        evaluator.kill()
    evaluator.start()
    await wait_until(lambda: _caught_up(redis, keys), timeout=20, what="evaluator caught up")

    expected = UserState(cursor="")
    rule = rules.parse(json.dumps(HOT).encode())
    want = []
    for i, t in enumerate(sent):
        reading = parse(_temps(start + timedelta(seconds=i), [t])[0])
        want += engine.advance(expected, [rule], [(reading.ts_ms, reading)], reading.ts_ms)
    got = await _alerts(redis, keys)
    assert _brief(got) == [(a.state, a.value) for a in want]
    assert [datetime.fromisoformat(a["ts"]) for a in got] == [a.ts for a in want]
    assert len(want) >= 12  # the sequence really crossed the limits, again and again


async def test_a_station_that_stops_goes_offline_within_ten_times_its_interval(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys
) -> None:
    """Readings every 0.5 s, then none: `offline` fires once, after 10 x 0.5 s of silence and within
    that plus one evaluation; /api/stations says late, then offline; a new reading resolves it."""
    dashboard = launch.dashboard("user1")
    await _add_rule(dashboard, {"id": "gone", "station": "*", "kind": "offline"})
    _evaluator(launch)
    for _ in range(8):
        await filled([body(station="post-01", ts=datetime.now(UTC).isoformat())])
        await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        listed = (await client.get("/api/stations")).json()
        stopped = datetime.now(UTC)
        assert listed["stations"][0]["station"] == "post-01"
        assert listed["stations"][0]["state"] == "online"
        assert 0.45 <= listed["stations"][0]["usual_interval_seconds"] <= 1.5  # 0.5 s and a store, slow or not
        usual = listed["stations"][0]["usual_interval_seconds"]
        alerts = await wait_until(lambda: _alerts(redis, keys), timeout=10 * usual + 5, what="offline")
        took = (datetime.now(UTC) - stopped).total_seconds()
        assert _brief(alerts) == [("firing", alerts[0]["value"])]
        assert alerts[0]["rule"]["kind"] == "offline"
        assert alerts[0]["value"] >= 10 * usual  # never before its bound
        assert took <= 10 * usual + 2  # and within one evaluation of it (0.5 s) plus slack
        listed = (await client.get("/api/stations")).json()
        assert listed["stations"][0]["state"] == "offline"
        assert listed["summary"] == {"online": 0, "late": 0, "offline": 1}
        await filled([body(station="post-01", ts=datetime.now(UTC).isoformat())])
        both = await wait_until(lambda: _at_least(2, redis, keys), what="resolved")
        assert [a["state"] for a in both] == ["firing", "resolved"]
        back = (await client.get("/api/stations")).json()["stations"][0]
        assert back["state"] != "offline"  # online, or already late again if this machine is slow
        assert back["silent_seconds"] < 5  # heard again: not the offline station's 5 s and more


async def test_user2s_rules_and_alerts_never_reach_user1(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys, settings: Settings
) -> None:
    one, two = launch.dashboard("user1"), launch.dashboard("user2")
    await _add_rule(two, {**HOT, "for_seconds": 0})
    _evaluator(launch)
    start = datetime.now(UTC) - timedelta(minutes=1)
    async with (
        httpx.AsyncClient(timeout=30) as client,
        aconnect_sse(client, "GET", f"{one.url}/events", headers=one.auth) as source,
    ):
        events = source.aiter_sse()
        assert (await anext(events)).retry is not None
        await filled(_temps(start, [35, 36]), user="user1")
        await filled(_temps(start, [35, 36], user="user2"), user="user2")
        await wait_until(lambda: _alerts(redis, keys, "user2"), what="user2's alert")
        await filled(_temps(start + timedelta(seconds=5), [20]), user="user1")  # a reading after it
        seen = []
        async with asyncio.timeout(10):
            async for event in events:
                seen.append(event.event)
                if event.event == "reading" and json.loads(event.data)["temperature"] == 20:
                    break
        await asyncio.sleep(1)  # two more polls of the dashboard's alert follower
    assert "alert" not in seen
    assert await _alerts(redis, keys, "user1") == []
    async with httpx.AsyncClient(base_url=one.url, headers=one.auth) as client:
        assert (await client.get("/api/rules")).json() == {"rules": []}
        assert (await client.get("/api/alerts")).json()["alerts"] == []
        assert (await client.delete("/api/rules", params={"id": "hot"})).status_code == 404
        assert (await client.post("/api/alerts/ack", json={"id": "1-0"})).status_code == 404
    async with httpx.AsyncClient(base_url=two.url, headers=two.auth) as client:
        assert [r["id"] for r in (await client.get("/api/rules")).json()["rules"]] == ["hot"]
        assert len((await client.get("/api/alerts")).json()["alerts"]) == 1
        assert (await client.get("/api/rules", headers=one.auth)).status_code == 401


async def test_rules_api_validates_lists_deletes_and_refuses_other_sites(launch: Launcher) -> None:
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        bad = await client.post("/api/rules", json={"station": "*", "kind": "above", "value": 3})
        assert bad.status_code == 400
        assert "needs `quantity`" in bad.json()["error"]
        bad = await client.post("/api/rules", content=b"not json")
        assert bad.status_code == 400
        assert "JSON" in bad.json()["error"]
        rule = await _add_rule(dashboard, {"station": "post-01", "kind": "below", "quantity": "humidity", "value": 20})
        assert rule["clear"] == 20
        assert rule["for_seconds"] == 0
        assert (await client.get("/api/rules")).json() == {"rules": [rule]}
        foreign = await client.post("/api/rules", json=HOT, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert (await client.delete("/api/rules")).status_code == 400
        assert (await client.delete("/api/rules", params={"id": rule["id"]})).json() == {"deleted": rule["id"]}
        assert (await client.get("/api/rules")).json() == {"rules": []}
        assert (await client.get("/api/alerts", params={"after": "soon"})).status_code == 400
        assert (await client.post("/api/alerts/ack", json={})).status_code == 400


async def test_alerts_reach_the_users_webhooks_signed_once_each(
    filled: Fill, launch: Launcher, redis: Redis, keys: Keys, settings: Settings
) -> None:
    """`sensorhub push` posts each alert as `{"type": "alert", ...}`, signed, before readings; a receiver
    failing at first gets the same webhook-id again; user2's alerts reach only user2's endpoint."""
    receiver = await Receiver(status=500).start()
    other = await Receiver().start()
    try:
        endpoint = await endpoints.add(redis, keys, "user1", receiver.url)
        await endpoints.add(redis, keys, "user2", other.url)
        dashboard = launch.dashboard("user1")
        await _add_rule(dashboard, {**HOT, "for_seconds": 0})
        _evaluator(launch)
        launch.sensorhub("push", "--http-port", str(free_port()), "--timeout", "3", "--retry-cap", "1")
        start = datetime.now(UTC) - timedelta(minutes=1)
        await filled(_temps(start, [35, 20]))
        # two attempts at the alert: push may have tried readings first, before the evaluator logged it
        await wait_until(lambda: len(_alert_attempts(receiver)) >= 2, 30, "two attempts at the alert")
        receiver.status = 200
        await wait_until(lambda: _alert_bodies(receiver, 2), 15, "firing and resolved delivered")
        await asyncio.sleep(1)  # a repeat would come now
        delivered = _alert_bodies(receiver, 2)
        logged = await _alerts(redis, keys)
        assert [{k: v for k, v in d.items() if k not in ("id", "user")} for d in delivered] == logged
        assert [d["state"] for d in delivered] == ["firing", "resolved"]
        assert all(d["type"] == "alert" and d["user"] == "user1" for d in delivered)
        first = _alert_attempts(receiver)
        assert first[0].webhook_id == first[1].webhook_id == f"msg_alert_{delivered[0]['id']}"  # retried as it was
        for request in receiver.deduped():
            Webhook(endpoint.secret).verify(request.body, request.headers)
        assert not [r for r in other.requests if r.payload.get("type") == "alert"]
    finally:
        await receiver.stop()
        await other.stop()


def _alert_attempts(receiver: Receiver) -> list[Received]:
    """Every request that carried an alert, answered or not, in the order they came."""
    return [request for request in receiver.requests if request.payload.get("type") == "alert"]


def _alert_bodies(receiver: Receiver, n: int) -> list[dict[str, Any]] | None:
    """The alert payloads the receiver answered 2xx, each webhook-id once, once there are `n`."""
    taken: dict[str, dict[str, Any]] = {}
    for request in receiver.requests:
        if request.status == 200 and request.payload.get("type") == "alert":
            taken.setdefault(request.webhook_id, request.payload)
    return list(taken.values()) if len(taken) >= n else None


def test_an_alert_on_the_stream_never_moves_the_reading_cursor() -> None:
    """SSE: `event: alert` without an `id:` line, so a browser's Last-Event-ID stays its last reading's."""
    notice = Notice("alert", '{"state":"firing","id":"5-0"}')
    assert notice.sse == b'event: alert\ndata: {"state":"firing","id":"5-0"}\n\n'
    assert json.loads(notice.ws) == {"type": "alert", "state": "firing", "id": "5-0"}
