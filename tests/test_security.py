"""Nobody in where they don't belong: dashboard tokens, Redis ACL users, RabbitMQ permissions."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiormq
import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import NoPermissionError

from sensorhub import broker
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from sensorhub.tools import acl
from tests.support.broker import holds, publish, rabbitmqctl
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.processes import run
from tests.support.readings import body
from tests.support.services import free_port
from tests.support.waiting import wait_until

# --- dashboard tokens -------------------------------------------------------------------------


async def test_without_a_valid_token_everything_but_health_is_401(launch: Launcher) -> None:
    """No token, a wrong one, or another user's: 401 on the page, the API and the stream."""
    user1 = launch.dashboard("user1")
    user2 = launch.dashboard("user2")
    async with httpx.AsyncClient(base_url=user1.url) as client:
        for path in ("/", "/api/readings", "/events", "/metrics"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await client.get(path, headers=user2.auth)).status_code == 401
            assert (await client.get(path, params={"token": user2.token})).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/api/readings", headers=user1.auth)).status_code == 200


async def test_token_in_url_becomes_a_per_user_httponly_strict_cookie(launch: Launcher) -> None:
    """?token= once: redirect without it, and a cookie named for the user that user2's dashboard refuses."""
    user1 = launch.dashboard("user1")
    user2 = launch.dashboard("user2")
    async with httpx.AsyncClient(base_url=user1.url) as client:
        first = await client.get("/", params={"token": user1.token})
        assert first.status_code == 303
        assert first.headers["location"] == f"{user1.url}/"
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("sensorhub_user1=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        page = await client.get("/")
        assert page.status_code == 200
        assert (await client.get("/api/readings")).status_code == 200
        value = client.cookies["sensorhub_user1"]
    # Browsers send every localhost cookie to every port: user1's must open nothing on user2's.
    async with httpx.AsyncClient(
        base_url=user2.url, cookies={"sensorhub_user1": value, "sensorhub_user2": value}
    ) as client:
        assert (await client.get("/")).status_code == 401


async def test_responses_carry_csp_nosniff_and_no_framing(launch: Launcher) -> None:
    """Every response of both services, refusals and errors included: a CSP with no inline script,
    nosniff, and frame-ancestors 'none'."""
    dashboard = launch.dashboard("user1")
    web = launch.web()
    user1 = web.user("user1")
    requests = [  # (URL, headers, the status it must get)
        (f"{dashboard.url}/", dashboard.auth, 200),
        (f"{dashboard.url}/api/readings", dashboard.auth, 200),
        (f"{dashboard.url}/healthz", {}, 200),
        (f"{dashboard.url}/api/readings", {}, 401),
        (f"{dashboard.url}/api/readings?limit=0", dashboard.auth, 400),
        (f"{user1.url}/", user1.auth, 200),
        (f"{user1.url}/api/readings", user1.auth, 200),
        (f"{web.url}/healthz", {}, 200),
        (f"{user1.url}/api/readings", {}, 401),
        (f"{web.url}/u/user2/api/readings", user1.auth, 401),
        (f"{user1.url}/api/readings?limit=0", user1.auth, 400),
    ]
    async with httpx.AsyncClient() as client:
        for url, headers, status in requests:
            response = await client.get(url, headers=headers)
            assert response.status_code == status, url
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"


async def test_dashboard_binds_to_loopback_by_default(launch: Launcher) -> None:
    """Without --host, a dashboard listens on 127.0.0.1 only."""
    dashboard = launch.dashboard("user1")  # started with no --host, and answering on 127.0.0.1
    assert await asyncio.to_thread(_listening_addresses, dashboard.port) == {"127.0.0.1"}
    for address in _own_addresses():
        with pytest.raises((ConnectionRefusedError, TimeoutError)):
            socket.create_connection((address, dashboard.port), timeout=2).close()


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on a TCP port, IPv4 and IPv6, as the kernel lists them."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                # The kernel writes each 32-bit word in host (little-endian) order.
                words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 2 * width, 8)]
                family = socket.AF_INET if width == 4 else socket.AF_INET6
                found.add(socket.inet_ntop(family, b"".join(words)))
    return found


def _own_addresses() -> set[str]:
    """This machine's IPv4 addresses other than loopback (where a dashboard on 0.0.0.0 would answer)."""
    addresses = {socket.gethostbyname(socket.gethostname())}
    if shutil.which("ip"):
        listing = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True)
        addresses |= {line.split()[3].partition("/")[0] for line in listing.stdout.splitlines()}
    return {address for address in addresses if not address.startswith("127.")}


# --- Redis ACL ----------------------------------------------------------------------------------


@pytest.fixture(name="acl_users")
async def _acl_users(settings: Settings, redis: Redis) -> AsyncIterator[dict[str, acl.RedisUser]]:
    planned = acl.plan(settings, ("user1", "user2"))
    for user in planned:
        await redis.execute_command(*user.setuser())
    yield {user.role: user for user in planned}
    for user in planned:
        await redis.execute_command("ACL", "DELUSER", user.name)


async def test_dashboard_acl_user_reads_only_its_own_user(
    settings: Settings, keys: Keys, redis: Redis, acl_users: dict[str, acl.RedisUser]
) -> None:
    """dashboard-user1's credentials read user1's keys and channel, and nothing of user2's; they write nothing."""
    await redis.set(keys.data("user1", 1, "a"), b"{}")
    await redis.set(keys.data("user2", 1, "b"), b"{}")
    await redis.xadd(keys.log("user1"), {"key": keys.data("user1", 1, "a")})
    await redis.xadd(keys.log("user2"), {"key": keys.data("user2", 1, "b")})
    mine = Redis.from_url(acl_users["dashboard-user1"].url(settings.redis_url))
    try:
        assert await mine.get(keys.data("user1", 1, "a")) == b"{}"
        assert len(await mine.xrange(keys.log("user1"))) == 1
        pubsub = mine.pubsub()
        await pubsub.subscribe(keys.notify("user1"))
        await pubsub.aclose()

        denied = [
            mine.get(keys.data("user2", 1, "b")),
            mine.mget([keys.data("user1", 1, "a"), keys.data("user2", 1, "b")]),
            mine.xrange(keys.log("user2")),
            mine.set(keys.data("user1", 2, "x"), b"{}"),
            mine.delete(keys.data("user1", 1, "a")),
            mine.publish(keys.notify("user1"), "x"),
            mine.keys("*"),
            mine.scan(0),
            mine.randomkey(),
            mine.eval("return 1", 0),
            mine.flushall(),
            mine.config_get("*"),
        ]
        for call in denied:
            with pytest.raises(NoPermissionError):
                await call
        other = mine.pubsub()
        with pytest.raises(NoPermissionError):
            await subscribed(other, keys.notify("user2"))
        await other.aclose()
    finally:
        await mine.aclose()


async def subscribed(pubsub: PubSub, channel: str) -> object:
    """Subscribe and read the answer: redis-py reports a refused SUBSCRIBE only when reading."""
    await pubsub.subscribe(channel)
    return await pubsub.get_message(timeout=1)


async def test_acl_users_are_enough_to_run_the_collector_and_a_dashboard(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    acl_users: dict[str, acl.RedisUser],
    launch: Launcher,
) -> None:
    """End to end with only the ACL users' rights: stored by the collector, served by the dashboard."""
    collector_settings = replace(settings, redis_url=acl_users["collector"].url(settings.redis_url))
    async with running_collector(collector_settings):
        await publish(amqp, settings.queue, [body(id="acl-1"), body(id="acl-2", user="user2")])
        await wait_until(lambda: redis.xlen(keys.log("user2")), what="stored with collector ACL user")
    assert await redis.xlen(keys.log("user1")) == 1
    dashboard_settings = replace(settings, redis_url=acl_users["dashboard-user1"].url(settings.redis_url))
    dashboard = launch.dashboard("user1", settings=dashboard_settings)
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        readings = (await client.get("/api/readings")).json()["readings"]
        assert [r["id"] for r in readings] == ["acl-1"]
        assert (await client.get("/healthz")).json()["subscribed"] is True


def test_acl_command_prints_setuser_lines_with_urls(settings: Settings) -> None:
    """`sensorhub acl` prints one ACL SETUSER line per role, each with the URL to give that process."""
    result = run("acl", "--users", "user1,user9", settings=settings)
    assert result.returncode == 0
    setusers = [line for line in result.stdout.splitlines() if line.startswith("ACL SETUSER")]
    assert len(setusers) == 4  # collector, alerts, one dashboard per user
    assert f"%R~{settings.namespace}:{{user9}}:data:*" in setusers[3]
    assert "+@read" not in result.stdout
    assert "+scan" not in result.stdout
    assert "+keys" not in result.stdout


# --- RabbitMQ permissions -------------------------------------------------------------------------


@pytest.fixture(name="rabbit_users")
def _rabbit_users(settings: Settings) -> Iterator[dict[str, str]]:
    """The least-privilege RabbitMQ users of the README, created for this test's queue."""
    suffix = uuid.uuid4().hex[:8]
    queue = settings.queue.replace(".", r"\.")
    users = {
        "generator": (f"gen-{suffix}", "^$", r"^amq\.default$", "^$"),
        "collector": (f"col-{suffix}", "^$", r"^amq\.default$", f"^{queue}$"),
    }
    for name, configure, write, read in users.values():
        rabbitmqctl("add_user", name, "pw")
        rabbitmqctl("set_permissions", "-p", "/", name, configure, write, read)
    yield {role: f"amqp://{name}:pw@127.0.0.1:5672/" for role, (name, *_) in users.items()}
    for name, *_ in users.values():
        rabbitmqctl("delete_user", name)


async def test_generator_user_can_publish_but_not_consume_or_declare(
    settings: Settings, amqp: aiormq.abc.AbstractChannel, rabbit_users: dict[str, str]
) -> None:
    """The generator's RabbitMQ user publishes with confirms; consuming or declaring is refused."""
    as_generator = replace(settings, amqp_url=rabbit_users["generator"])
    generator = run("generate", "--count", "20", "--rate", "0", settings=as_generator)
    assert generator.returncode == 0, generator.stdout + generator.stderr
    connection = await aiormq.connect(rabbit_users["generator"])
    try:
        channel = await connection.channel()
        with pytest.raises(aiormq.ChannelAccessRefused):
            await channel.basic_get(settings.queue)
        channel = await connection.channel()
        with pytest.raises(aiormq.ChannelAccessRefused):
            await channel.queue_declare(f"{settings.queue}.mine", durable=True)
    finally:
        await connection.close()


async def test_collector_user_consumes_and_dead_letters_but_cannot_declare(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel, rabbit_users: dict[str, str]
) -> None:
    """The collector's RabbitMQ user consumes the queue and publishes to its DLQ, nothing more."""
    await publish(amqp, settings.queue, [body(id="ok-1"), b"not json"])
    async with running_collector(replace(settings, amqp_url=rabbit_users["collector"])):
        await wait_until(lambda: redis.xlen(keys.log("user1")))
        await wait_until(lambda: holds(amqp, settings.dlq, 1))
    connection = await aiormq.connect(rabbit_users["collector"])
    try:
        channel = await connection.channel()
        with pytest.raises(aiormq.ChannelAccessRefused):
            await channel.basic_get(settings.dlq)
    finally:
        await connection.close()


# --- RabbitMQ notification queues -------------------------------------------------------------------


@pytest.fixture(name="app_users")
async def _app_users(settings: Settings) -> AsyncIterator[dict[str, str]]:
    """An app's RabbitMQ user per user, as the README sets it up: read its own notification queue, nothing more."""
    suffix = uuid.uuid4().hex[:8]
    urls = {}
    for user in ("user1", "user2"):
        name = f"app-{user}-{suffix}"
        queue = re.escape(broker.notification_queue(settings, user))
        rabbitmqctl("add_user", name, "pw")
        rabbitmqctl("set_permissions", "-p", "/", name, "^$", "^$", f"^{queue}$")
        urls[user] = f"amqp://{name}:pw@127.0.0.1:5672/"
    yield urls
    for url in urls.values():
        rabbitmqctl("delete_user", url.split("//")[1].split(":")[0])
    connection = await aiormq.connect(settings.amqp_url)
    channel = await connection.channel()
    for user in urls:
        await channel.queue_delete(broker.notification_queue(settings, user))
    await channel.exchange_delete(broker.notify_exchange(settings))
    await connection.close()


async def test_app_user_consumes_its_own_notification_queue_and_nothing_else(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    app_users: dict[str, str],
    launch: Launcher,
) -> None:
    """user1's app credentials: `tail` reads user1's queue; user2's queue, binding, declaring, publishing refused."""
    notifying = replace(settings, notify=("rabbitmq",))
    async with running_collector(notifying):
        await publish(amqp, settings.queue, [body(id="n-1"), body(id="n-2", user="user2")])
        await wait_until(lambda: redis.xlen(keys.log("user2")), what="stored for user2")
    as_app = replace(notifying, amqp_url=app_users["user1"])
    tail = launch.sensorhub("tail", "--user", "user1", "--via", "rabbitmq", settings=as_app)
    await wait_until(lambda: '"last_id"' in tail.output or not tail.running, 20, "tail printing user1's notification")
    assert '"user":"user1"' in tail.output, tail.output

    mine, theirs = broker.notification_queue(settings, "user1"), broker.notification_queue(settings, "user2")
    exchange = broker.notify_exchange(settings)
    refused = {
        "consume user2's queue": lambda ch: ch.basic_consume(theirs, _ignore),
        "get from user2's queue": lambda ch: ch.basic_get(theirs),
        "bind its queue to user2's key": lambda ch: ch.queue_bind(mine, exchange, routing_key="user2"),
        "declare a queue": lambda ch: ch.queue_declare(f"{settings.namespace}.mine", durable=True),
        "declare an exchange": lambda ch: ch.exchange_declare(f"{settings.namespace}.x", exchange_type="fanout"),
        "publish a notification": lambda ch: ch.basic_publish(b"{}", exchange=exchange, routing_key="user2"),
    }
    connection = await aiormq.connect(app_users["user1"])
    try:
        allowed = []
        for what, call in refused.items():
            try:
                await call(await connection.channel(publisher_confirms=True))
            except aiormq.ChannelAccessRefused:
                continue
            allowed.append(what)
        assert not allowed, f"user1's app may {allowed}"
        channel = await connection.channel()
        await channel.basic_consume(mine, _ignore)  # its own: allowed
    finally:
        await connection.close()


async def _ignore(message: aiormq.abc.DeliveredMessage) -> None:
    pass


async def test_acl_users_are_enough_for_rules_and_alerts(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    acl_users: dict[str, acl.RedisUser],
    launch: Launcher,
) -> None:
    """A dashboard with its ACL user adds a rule; `sensorhub alerts` with its own fires it; the
    dashboard user still cannot write a reading, nor touch user2's rules."""
    dashboard_settings = replace(settings, redis_url=acl_users["dashboard-user1"].url(settings.redis_url))
    dashboard = launch.dashboard("user1", settings=dashboard_settings)
    rule = {"id": "hot", "station": "*", "kind": "above", "quantity": "temperature", "value": 30}
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        assert (await client.post("/api/rules", json=rule)).status_code == 201
    alerts_settings = replace(settings, redis_url=acl_users["alerts"].url(settings.redis_url))
    launch.sensorhub("alerts", "--http-port", str(free_port()), settings=alerts_settings)
    async with running_collector(settings):
        await publish(amqp, settings.queue, [body(id="hot-1", temperature=35)])
        await wait_until(lambda: redis.xlen(keys.alerts("user1")), what="an alert logged by the alerts ACL user")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        (alert,) = (await client.get("/api/alerts")).json()["alerts"]
        assert (await client.post("/api/alerts/ack", json={"id": alert["id"]})).status_code == 200
    mine = Redis.from_url(acl_users["dashboard-user1"].url(settings.redis_url))
    try:
        await redis.hset(keys.webhook("user1", "ep_1"), "secret", "whsec_x")
        for call in (
            mine.set(keys.data("user1", 2, "x"), b"{}"),
            mine.hset(keys.rules("user2"), "x", "{}"),
            mine.hgetall(keys.webhook("user1", "ep_1")),
        ):
            with pytest.raises(NoPermissionError):
                await call
    finally:
        await mine.aclose()
