"""Stations over MQTT (issue 12, section 1): real MQTT clients publish through RabbitMQ's MQTT plugin
on a node of the module's own; the topic is authoritative and each station's account can publish
only to its own topic."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import replace
from urllib.parse import quote

import aiomqtt
import aiormq
import httpx
import pytest
from redis.asyncio import Redis

from sensorhub import broker
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from sensorhub.tools.station_accounts import Accounts
from tests.support.broker import holds, queue_counts
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.processes import run
from tests.support.readings import body
from tests.support.services import free_port
from tests.support.sse import read_events
from tests.support.waiting import logged, wait_until

KEYS = Keys("")  # the Redis of mqtt_settings is the test's own: no namespace


def add_station(settings: Settings, user: str, station: str) -> tuple[str, str]:
    """`sensorhub station add`: the username and password it printed."""
    added = run("station", "add", "--user", user, "--station", station, settings=settings)
    assert added.returncode == 0, added.stderr
    lines = dict(line.split(": ", 1) for line in added.stdout.splitlines() if line.startswith(("username", "password")))
    return lines["username"], lines["password"]


def client(settings: Settings, username: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", settings.mqtt_port, username=username, password=password, timeout=3)


async def publish_as(settings: Settings, username: str, password: str, topic: str, payload: bytes) -> None:
    """Connect as that account, publish twice with QoS 1 (the second fails if the first got us disconnected)."""
    async with client(settings, username, password) as station:
        await station.publish(topic, payload, qos=1)
        await station.publish(topic, payload, qos=1)


async def subscribe_as(settings: Settings, username: str, password: str, topic: str) -> None:
    async with client(settings, username, password) as station:
        await station.subscribe(topic, qos=1)


async def declared(settings: Settings) -> aiormq.abc.AbstractChannel:
    """A channel on the node, with the readings queue declared and bound to amq.topic."""
    connection = await aiormq.connect(settings.amqp_url)
    channel = await connection.channel()
    await broker.declare(channel, settings)
    return channel


async def test_readings_published_over_mqtt_reach_the_dashboard(
    mqtt_settings: Settings, launch: Launcher, mqtt_redis: Redis
) -> None:
    """A station publishes with QoS 1 to its topic; the collector stores it; the dashboard streams it."""
    settings = mqtt_settings
    await declared(settings)  # the topology exists before stations publish (else the plugin drops it)
    launch.sensorhub("collect", "--http-port", str(free_port()), settings=settings)
    dashboard = launch.dashboard("user1", settings=settings)
    username, password = add_station(settings, "user1", "post-01")
    sent = [json.loads(body(station="post-01", temperature=t)) for t in (1.5, 2.5, 3.5)]
    async with client(settings, username, password) as station:
        for reading in sent:
            await station.publish("sensors/user1/post-01", json.dumps(reading), qos=1)
    events = await read_events(dashboard, 3, last_id="0-0")
    assert [json.loads(e.data)["id"] for e in events] == [r["id"] for r in sent]
    assert [json.loads(e.data)["temperature"] for e in events] == [1.5, 2.5, 3.5]


async def test_generate_via_mqtt_publishes_as_the_stations_do(
    mqtt_settings: Settings, launch: Launcher, mqtt_redis: Redis
) -> None:
    """`generate --via mqtt` creates an account per station and every reading it counts arrives, once."""
    settings = mqtt_settings
    launch.sensorhub("collect", "--http-port", str(free_port()), settings=settings)
    generated = run("generate", "--via", "mqtt", "--count", "60", "--rate", "0", "--stations", "2", settings=settings)
    assert generated.returncode == 0, generated.stderr
    assert "60 readings confirmed" in generated.stderr
    await wait_until(lambda: logged(mqtt_redis, KEYS, 60, ("user1", "user2")), what="60 readings stored")
    listing = run("station", "list", settings=settings).stdout
    for user in ("user1", "user2"):
        for station in ("post-01", "post-02"):
            assert f"username: {user}.{station}" in listing


async def test_a_station_can_publish_only_to_its_own_topic_and_read_nothing(mqtt_settings: Settings) -> None:
    """user1/post-01's account is refused on post-02's topic, on user2's topic, and for a subscription."""
    settings = mqtt_settings
    channel = await declared(settings)
    username, password = add_station(settings, "user1", "post-01")
    for foreign in ("sensors/user1/post-02", "sensors/user2/post-01", "sensors/user2/post-01/x"):
        with pytest.raises(aiomqtt.MqttError):  # the broker disconnects the station
            await publish_as(settings, username, password, foreign, body(station="post-02"))
    with pytest.raises(aiomqtt.MqttError):  # reading nothing: a subscription gets it disconnected too
        await subscribe_as(settings, username, password, "sensors/#")
    await publish_as(settings, username, password, "sensors/user1/post-01", body(id="own"))
    await wait_until(lambda: holds(channel, settings.queue, 2), what="the station's own two readings queued")
    for _ in range(2):  # only the own topic's, nothing from the refused ones
        message = await channel.basic_get(settings.queue, no_ack=True)
        assert json.loads(message.body)["id"] == "own"
        assert message.delivery.routing_key == "sensors.user1.post-01"
    assert await queue_counts(channel, settings.queue) == (0, 0)
    with pytest.raises(aiomqtt.MqttError):  # a wrong password is refused at once
        await publish_as(settings, username, "wrong", "sensors/user1/post-01", body())


async def test_a_spoofed_body_is_dead_lettered_with_its_reason(mqtt_settings: Settings, mqtt_redis: Redis) -> None:
    """The topic is authoritative: a body naming another user or station goes to the DLQ, saying why."""
    settings = mqtt_settings
    channel = await declared(settings)
    username, password = add_station(settings, "user1", "post-01")
    async with running_collector(settings):
        async with client(settings, username, password) as station:
            await station.publish("sensors/user1/post-01", body(user="user2", id="as-user2"), qos=1)
            await station.publish("sensors/user1/post-01", body(station="post-07", id="as-post-07"), qos=1)
            await station.publish("sensors/user1/post-01", body(id="honest"), qos=1)
        await wait_until(lambda: holds(channel, settings.dlq, 2), what="two dead letters")
        await wait_until(lambda: logged(mqtt_redis, KEYS, 1), what="the honest reading stored")
    assert await mqtt_redis.xlen(KEYS.log("user2")) == 0
    reasons = {}
    for _ in range(2):
        letter = await channel.basic_get(settings.dlq, no_ack=True)
        headers = letter.header.properties.headers or {}
        reasons[json.loads(letter.body)["id"]] = headers[broker.ERROR_HEADER]
    assert reasons["as-user2"].startswith("body is for user 'user2', station 'post-01', but came on topic")
    assert "'sensors/user1/post-01'" in reasons["as-user2"]
    assert "station 'post-07'" in reasons["as-post-07"]


async def test_a_namespace_gets_only_its_own_stations(mqtt_settings: Settings) -> None:
    """With SENSORHUB_NAMESPACE=ns the topics are `ns/sensors/...` and the accounts `ns/<user>.<station>`:
    deployments (and tests) sharing a broker never receive each other's stations."""
    plain, spaced = mqtt_settings, replace(mqtt_settings, namespace="ns.a", queue=mqtt_settings.queue + ".ns")
    plain_channel, spaced_channel = await declared(plain), await declared(spaced)
    username, password = add_station(spaced, "user1", "post-01")
    assert username == "ns.a/user1.post-01"
    assert "topic: ns.a/sensors/user1/post-01" in run("station", "list", settings=spaced).stdout
    assert run("station", "list", settings=plain).stdout == "no station accounts\n"
    with pytest.raises(aiomqtt.MqttError):  # not its topic: the un-namespaced one
        await publish_as(spaced, username, password, "sensors/user1/post-01", body())
    await publish_as(spaced, username, password, "ns.a/sensors/user1/post-01", body(id="spaced"))
    await wait_until(lambda: holds(spaced_channel, spaced.queue, 2), what="both in the namespace's queue")
    assert await queue_counts(plain_channel, plain.queue) == (0, 0)
    async with running_collector(spaced):  # the topic check knows the namespace too: stored, not dead-lettered
        await wait_until(lambda: holds(spaced_channel, spaced.queue, 0), what="the namespace's queue drained")
    assert await queue_counts(spaced_channel, spaced.dlq) == (0, 0)
    await spaced_channel.queue_delete(spaced.queue)
    await spaced_channel.queue_delete(spaced.dlq)
    async with Accounts(spaced) as accounts:
        assert await accounts.remove("user1", "post-01")


async def test_station_add_list_remove(mqtt_settings: Settings) -> None:
    """The account is printed on lines of its own, listed, and removed; mistakes are one line each."""
    settings = mqtt_settings
    assert run("station", "list", settings=settings).stdout == "no station accounts\n"
    username, password = add_station(settings, "user2", "roof_3")
    assert username == "user2.roof_3"
    assert len(password) >= 24
    listing = run("station", "list", settings=settings)
    assert listing.returncode == 0
    assert listing.stdout.split() == ["user2", "roof_3", "username:", "user2.roof_3", "topic:", "sensors/user2/roof_3"]
    again = add_station(settings, "user2", "roof_3")
    assert again[1] != password  # adding again gives the account a new password
    removed = run("station", "remove", "--user", "user2", "--station", "roof_3", settings=settings)
    assert (removed.returncode, removed.stdout) == (0, "removed station roof_3 of user2\n")
    assert run("station", "list", settings=settings).stdout == "no station accounts\n"
    gone = run("station", "remove", "--user", "user2", "--station", "roof_3", settings=settings)
    assert (gone.returncode, gone.stderr) == (1, "sensorhub station: error: user2 has no station account roof_3\n")
    bad = run("station", "add", "--user", "user2", "--station", "a/b", settings=settings)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "--station must be 1-64 characters of [A-Za-z0-9_-]" in bad.stderr


async def test_a_removed_station_can_publish_no_more(mqtt_settings: Settings) -> None:
    """`station remove` while the station is connected: what it publishes next is refused, and it is
    disconnected."""
    settings = mqtt_settings
    channel = await declared(settings)
    username, password = add_station(settings, "user1", "post-01")

    async def publish_remove_publish() -> None:
        async with client(settings, username, password) as station:
            await station.publish("sensors/user1/post-01", body(id="before"), qos=1)
            removed = run("station", "remove", "--user", "user1", "--station", "post-01", settings=settings)
            assert removed.returncode == 0, removed.stderr
            for n in range(3):
                await station.publish("sensors/user1/post-01", body(id=f"after-{n}"), qos=1)

    with pytest.raises(aiomqtt.MqttError):
        await publish_remove_publish()
    await wait_until(lambda: holds(channel, settings.queue, 1), what="the one reading sent before")
    assert json.loads((await channel.basic_get(settings.queue, no_ack=True)).body)["id"] == "before"
    with pytest.raises(aiomqtt.MqttError):
        await publish_as(settings, username, password, "sensors/user1/post-01", body())


def test_station_commands_say_in_one_line_when_the_api_is_unreachable(mqtt_settings: Settings) -> None:
    """No management API at the URL: one line naming it, exit 1, no traceback."""
    down = run("station", "list", settings=mqtt_settings, env={"SENSORHUB_RABBITMQ_API_URL": "http://127.0.0.1:1/"})
    assert down.returncode == 1
    assert down.stderr.startswith("sensorhub station: error: the RabbitMQ management API is not reachable at")
    assert down.stderr.count("\n") == 1


async def test_generate_via_mqtt_resends_what_a_closed_connection_caught(
    mqtt_settings: Settings, launch: Launcher, mqtt_redis: Redis
) -> None:
    """The operator closes every station's connection mid-run: the stations reconnect, and every
    reading the generator counted is stored, once."""
    settings = mqtt_settings
    launch.sensorhub("collect", "--http-port", str(free_port()), settings=settings)
    generator = launch.sensorhub("generate", "--via", "mqtt", "--rate", "100", "--count", "2500", settings=settings)
    await wait_until(lambda: logged_at_least(mqtt_redis, KEYS, 200), timeout=30, what="200 readings stored")
    names = await wait_until(
        lambda: _six(station_connections(settings)), timeout=20, what="the 6 stations' connections listed"
    )
    await close_connections(settings, names)
    assert await generator.exit_code(60) == 0, generator.output
    assert "reconnecting" in generator.output
    stored = lambda: logged(mqtt_redis, KEYS, 2500, ("user1", "user2"))  # noqa: E731
    await wait_until(stored, timeout=20, what="2500 readings stored")


async def _six(names: Awaitable[list[str]]) -> list[str] | None:
    found = await names
    return found if len(found) == 6 else None


async def logged_at_least(redis: Redis, keys: Keys, n: int) -> bool:
    return int(await redis.xlen(keys.log("user1"))) + int(await redis.xlen(keys.log("user2"))) >= n


async def station_connections(settings: Settings) -> list[str]:
    """The names of the open connections of station accounts (the API lists a new one within ~5 s)."""
    async with httpx.AsyncClient(base_url=settings.rabbitmq_api_url + "api/", auth=("guest", "guest")) as api:
        return [c["name"] for c in (await api.get("connections")).json() if ".post-" in c.get("user", "")]


async def close_connections(settings: Settings, names: list[str]) -> None:
    """Close them as an operator would, in the management API."""
    async with httpx.AsyncClient(base_url=settings.rabbitmq_api_url + "api/", auth=("guest", "guest")) as api:
        for name in names:
            assert (await api.delete(f"connections/{quote(name, safe='')}")).status_code == 204
