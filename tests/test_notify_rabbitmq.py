"""Per-user RabbitMQ notification queues, `sensorhub tail`, and a dashboard woken by the queue.

A notification is a hint, but a hint that must be right: in a run smaller than the queue's bound,
every stored data key appears in exactly one notification, in log order, and each notification's
last_id is the log id of its last key. Tests end with that ledger (and the dashboard's with the SSE
ledger: confirmed = stored = streamed, once each, in log order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiormq
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from sensorhub import broker, notify
from sensorhub.dashboard.feed import SAFETY_POLL_SECONDS
from sensorhub.dashboard.wakeups import QueueWakeups
from sensorhub.keys import Keys
from sensorhub.pipeline.collector import Tuning
from sensorhub.settings import Settings
from tests.support.broker import close_connections, publish, queue_counts, rabbitmqctl
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.ledger import check_ledger, confirmed_ids, each_once, logged_at_least, stored_ids
from tests.support.processes import Process, alive, env_for, run
from tests.support.readings import body
from tests.support.services import RabbitNode, free_port
from tests.support.waiting import logged, wait_until

USER = "user1"


@contextlib.asynccontextmanager
async def channel_to(url: str) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def delete_notify_topology(settings: Settings, users: tuple[str, ...]) -> None:
    """The test's exchange and users' queues are gone (they are namespaced: other tests' are untouched)."""
    async with channel_to(settings.amqp_url) as channel:
        for user in users:
            await channel.queue_delete(broker.notification_queue(settings, user))
        await channel.exchange_delete(broker.notify_exchange(settings))


@pytest.fixture(name="notifying")
async def _notifying(settings: Settings) -> AsyncIterator[Settings]:
    """The test's settings with one user, the collector announcing in Redis and RabbitMQ; topology removed after."""
    yield replace(settings, users=(USER,), notify=("redis", "rabbitmq"))
    await delete_notify_topology(settings, (USER, "user2"))


@pytest.fixture(name="on_own_node")
def _on_own_node(notifying: Settings, rabbit_node: RabbitNode) -> Settings:
    """`notifying` on a RabbitMQ node of the module's own, whose connections a test may close."""
    return replace(notifying, amqp_url=rabbit_node.url)


# --- the ledger of notifications -----------------------------------------------------------------


def notifications(process: Process) -> list[dict[str, Any]]:
    """The JSON lines `sensorhub tail` printed (its log lines are text)."""
    return [json.loads(line) for line in process.output.splitlines() if line.startswith("{")]


def keys_announced(process: Process) -> int:
    return sum(len(n["keys"]) for n in notifications(process))


async def log_keys(redis: Redis, keys: Keys, user: str = USER) -> list[tuple[str, str]]:
    """(log id, data key) of every entry of the user's log, in log order."""
    return [(log_id.decode(), fields[b"key"].decode()) for log_id, fields in await redis.xrange(keys.log(user))]


async def check_notifications(redis: Redis, keys: Keys, announced: list[dict[str, Any]], user: str = USER) -> None:
    """Every stored key in exactly one notification, in log order; each last_id the log id of its last key."""
    log = await log_keys(redis, keys, user)
    got = [key for n in announced for key in n["keys"]]
    each_once(got, [key for _, key in log], "notifications")
    assert got == [key for _, key in log], "notifications are not in log order"
    last_of = {key: log_id for log_id, key in log}
    assert all(n["user"] == user and n["last_id"] == last_of[n["keys"][-1]] for n in announced)


def generate(launch: Launcher, settings: Settings, count: int, seed: int) -> Process:
    return launch.sensorhub("generate", "--count", str(count), "--rate", "0", "--seed", str(seed), settings=settings)


def collect(launch: Launcher, settings: Settings) -> Process:
    return launch.sensorhub("collect", "--http-port", str(free_port()), settings=settings)


async def listening(process: Process, times: int = 1) -> None:
    """Wait until the process said it listens (for the `times`-th time)."""
    await wait_until(
        lambda: alive(process) and process.output.count("listening on") >= times, 20, f"{process} listening"
    )


# --- sensorhub tail ----------------------------------------------------------------------------------


async def test_tail_via_rabbitmq_prints_every_notification_once_through_a_broker_connection_close(
    on_own_node: Settings, rabbit_node: RabbitNode, redis: Redis, keys: Keys, launch: Launcher
) -> None:
    """`tail --via rabbitmq` prints a run's notifications; the broker closes its connection; it goes on printing."""
    tail = launch.sensorhub("tail", "--user", USER, "--via", "rabbitmq", settings=on_own_node)
    await listening(tail)
    collector = collect(launch, on_own_node)
    first = await confirmed_ids(generate(launch, on_own_node, 300, 21), 300, 21)
    await wait_until(lambda: alive(tail) and keys_announced(tail) >= 300, 30, "300 keys announced")

    assert await asyncio.to_thread(rabbit_node.close_connections, "sensorhub-tail") == 1
    # Published while tail is away: the queue keeps them for it.
    second = await confirmed_ids(generate(launch, on_own_node, 300, 22), 300, 22)
    await listening(tail, times=2)
    await wait_until(lambda: alive(tail, collector) and keys_announced(tail) >= 600, 30, "600 keys announced")
    await asyncio.sleep(0.5)  # a late duplicate would show up now

    each_once(await stored_ids(redis, keys), first + second, "Redis")
    await check_notifications(redis, keys, notifications(tail))
    tail.send_signal(signal.SIGTERM)
    assert await tail.exit_code(10) == 0


async def test_tail_via_redis_prints_every_notification_once(
    notifying: Settings, redis: Redis, keys: Keys, launch: Launcher
) -> None:
    """`tail --via redis` (the default) prints the same lines from the Redis channel; Ctrl-C ends it with 0."""
    tail = launch.sensorhub("tail", "--user", USER, settings=notifying)
    await listening(tail)
    collect(launch, notifying)
    confirmed = await confirmed_ids(generate(launch, notifying, 300, 23), 300, 23)
    await wait_until(lambda: alive(tail) and keys_announced(tail) >= 300, 30, "300 keys announced")
    await asyncio.sleep(0.5)
    each_once(await stored_ids(redis, keys), confirmed, "Redis")
    await check_notifications(redis, keys, notifications(tail))
    tail.send_signal(signal.SIGINT)
    assert await tail.exit_code(10) == 0
    assert "Traceback" not in tail.output


# --- the dashboard woken by the queue ----------------------------------------------------------------


async def test_dashboard_on_rabbitmq_notifications_streams_every_reading_once_through_a_connection_close(
    on_own_node: Settings, rabbit_node: RabbitNode, redis: Redis, keys: Keys, launch: Launcher
) -> None:
    """`dashboard --notify-via rabbitmq`, Redis announcing nothing: each reading once, in order, through a close."""
    only_queue = replace(on_own_node, notify=("rabbitmq",), notify_via="rabbitmq")
    dashboard = await asyncio.to_thread(launch.dashboard, USER, settings=only_queue)
    sse = await launch.sse(dashboard)
    collector = collect(launch, only_queue)
    generator = launch.sensorhub("generate", "--count", "3000", "--rate", "1000", "--seed", "24", settings=only_queue)
    await logged_at_least(redis, keys, 800, collector)

    assert await asyncio.to_thread(rabbit_node.close_connections, "sensorhub-dashboard") == 1
    await listening(dashboard, times=2)
    queue = broker.notification_queue(only_queue, USER)
    async with channel_to(rabbit_node.url) as channel:
        await wait_until(lambda: _consumers(channel, queue), 20, "the dashboard consuming its queue again")

    await check_ledger(redis, keys, await confirmed_ids(generator, 3000, 24), sse, collector, dashboard)


async def _consumers(channel: aiormq.abc.AbstractChannel, queue: str) -> bool:
    return (await queue_counts(channel, queue))[1] == 1


async def test_queue_wakeups_tick_on_a_notification_and_raise_when_the_broker_closes_them(settings: Settings) -> None:
    """A notification wakes the feed well before its safety poll; a broker-side close ends the ticks with an error."""
    user = f"w{uuid.uuid4().hex[:8]}"  # a connection name no other test uses, on the shared broker
    wakeups = QueueWakeups(settings, user)
    connection = await broker.connect(settings, "sensorhub-test-publisher")
    try:
        async with wakeups() as ticks:
            publisher = notify.Publisher(connection, settings)
            await publisher.open()
            tick = asyncio.ensure_future(anext(ticks))
            await publisher.publish([notify.Notification(user, ["k"], "1-0")])
            await asyncio.wait_for(tick, SAFETY_POLL_SECONDS / 2)  # measured, with a generous bound

            closed = await asyncio.to_thread(close_connections, rabbitmqctl, f"sensorhub-dashboard:{user}")
            assert closed == 1
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(anext(ticks), 10)
    finally:
        await connection.close()
        await delete_notify_topology(settings, (user,))


# --- bounded, and only for users seen -----------------------------------------------------------------


async def test_queue_stays_bounded_when_nobody_reads(
    notifying: Settings, redis: Redis, keys: Keys, amqp: aiormq.abc.AbstractChannel
) -> None:
    """More notifications than the bound, nobody reading: the queue holds the bound, the newest ones."""
    total = broker.NOTIFICATION_MAX_LENGTH + 100
    async with running_collector(notifying, Tuning(max_batch=1)):  # one reading per batch: one notification each
        await publish(amqp, notifying.queue, [body(id=f"b{n}") for n in range(total)])
        await wait_until(lambda: logged(redis, keys, total), 60, f"{total} readings logged")
    queue = broker.notification_queue(notifying, USER)
    ready, _ = await queue_counts(amqp, queue)
    assert ready == broker.NOTIFICATION_MAX_LENGTH
    oldest_kept = await amqp.basic_get(queue, no_ack=True)
    log = await log_keys(redis, keys)
    assert json.loads(oldest_kept.body)["last_id"] == log[100][0]  # drop-head dropped the 100 oldest


async def test_a_user_nobody_has_seen_has_no_queue(
    notifying: Settings, redis: Redis, keys: Keys, amqp: aiormq.abc.AbstractChannel
) -> None:
    """The collector declares user1's queue when it stores user1's reading; user2, never seen, has none."""
    async with running_collector(notifying):
        await publish(amqp, notifying.queue, [body(id="seen-1")])
        await wait_until(lambda: logged(redis, keys, 1), what="stored")
    async with channel_to(notifying.amqp_url) as channel:
        assert await queue_counts(channel, broker.notification_queue(notifying, USER)) == (1, 0)
        with pytest.raises(aiormq.ChannelNotFoundEntity):
            await channel.queue_declare(broker.notification_queue(notifying, "user2"), passive=True)


async def test_every_notifications_fate_is_a_metric(
    notifying: Settings, redis: Redis, keys: Keys, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Confirmed ones match what the queue holds; one that found no queue (deleted) counts as returned."""

    def count(outcome: str) -> float:
        value = REGISTRY.get_sample_value("sensorhub_rabbitmq_notifications_total", {"user": USER, "outcome": outcome})
        return value or 0.0

    confirmed, returned = count("confirmed"), count("returned")
    queue = broker.notification_queue(notifying, USER)
    async with running_collector(notifying):
        await publish(amqp, notifying.queue, [body(id=f"m{n}") for n in range(5)])
        await wait_until(lambda: logged(redis, keys, 5), what="5 stored")

        async def settled() -> bool:
            # A notification is in the queue a moment before its confirm reaches the collector.
            ready, _ = await queue_counts(amqp, queue)
            return ready >= 1 and count("confirmed") - confirmed == ready

        # The readings are in Redis before the collector declares the user's queue and notifies:
        # until one notification is confirmed the queue may not exist (and a passive declare of a
        # missing queue would close the test's channel).
        await wait_until(lambda: count("confirmed") - confirmed >= 1, what="a notification confirmed")
        await wait_until(settled, what="each notification in the queue counted as confirmed")
        ready, _ = await queue_counts(amqp, queue)
        assert ready >= 1
        assert count("confirmed") - confirmed == ready
        await amqp.queue_delete(queue)
        await publish(amqp, notifying.queue, [body(id="after-delete")])
        await wait_until(lambda: logged(redis, keys, 6), what="6 stored")
        await wait_until(lambda: count("returned") - returned == 1, what="the returned notification counted")


async def test_without_redis_in_notify_no_pubsub_notification_is_counted(
    notifying: Settings, redis: Redis, keys: Keys, amqp: aiormq.abc.AbstractChannel
) -> None:
    """SENSORHUB_NOTIFY=rabbitmq alone: nothing is published on Redis, and the Pub/Sub metric says so."""

    def published() -> float:
        value = REGISTRY.get_sample_value("sensorhub_notifications_published_total", {"user": USER})
        return value or 0.0

    before = published()
    async with running_collector(replace(notifying, notify=("rabbitmq",))):
        await publish(amqp, notifying.queue, [body(id="only-queue")])
        await wait_until(lambda: logged(redis, keys, 1), what="stored")
    assert published() == before


def test_queue_names_are_the_issues_without_a_namespace_and_prefixed_with_one() -> None:
    """`sensorhub.notify`, `user1_notifications`; with namespace ns: `ns.sensorhub.notify`, `ns.user1_notifications`."""
    plain, spaced = Settings(), Settings(namespace="ns")
    assert (broker.notify_exchange(plain), broker.notification_queue(plain, "user1")) == (
        "sensorhub.notify",
        "user1_notifications",
    )
    assert (broker.notify_exchange(spaced), broker.notification_queue(spaced, "user1")) == (
        "ns.sensorhub.notify",
        "ns.user1_notifications",
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["collect", "--notify", "redis,kafka"], {}, "--notify must be a comma list of redis, rabbitmq, got"),
        (["collect"], {"SENSORHUB_NOTIFY": "pubsub"}, "SENSORHUB_NOTIFY must be a comma list of redis, rabbitmq"),
        (["dashboard", "--user", "user1", "--notify-via", "kafka"], {}, "--notify-via must be one of redis, rabbitmq"),
        (["tail", "--user", "user1", "--via", "kafka"], {}, "argument --via: invalid choice: 'kafka'"),
        (["tail", "--user", "../x"], {}, "--user must be a user id"),
    ],
)
def test_an_unknown_notify_target_is_refused_in_one_line(args: list[str], env: dict[str, str], says: str) -> None:
    """Exit 2 and one line naming the flag or variable, no traceback."""
    result = run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]


async def test_tail_piped_into_head_ends_when_head_has_its_lines(settings: Settings, redis: Redis, keys: Keys) -> None:
    """`sensorhub tail | head -n 1`: a reader that went away ends tail quietly, it is not a lost subscription."""
    pipeline = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m sensorhub tail --user {USER} | head -n 1",
        env=env_for(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        note = json.dumps({"keys": [keys.data(USER, 1, "x")], "last_id": "1-0"})
        await wait_until(lambda: _announce(redis, keys, note, pipeline), 30, "tail | head to end")
        out, err = await asyncio.wait_for(pipeline.communicate(), 10)
    finally:
        if pipeline.returncode is None:
            pipeline.kill()
    assert json.loads(out)["last_id"] == "1-0"
    assert b"subscription lost" not in err
    assert b"Traceback" not in err


async def _announce(redis: Redis, keys: Keys, note: str, pipeline: asyncio.subprocess.Process) -> bool:
    """Publish one notification; True once the whole pipeline has ended."""
    await redis.publish(keys.notify(USER), note)
    return pipeline.returncode is not None
