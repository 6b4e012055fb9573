"""The collector against the real RabbitMQ and Redis: layout, TTLs, log, notifications, faults."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from dataclasses import replace

import aiormq
import msgspec
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from sensorhub.broker import ERROR_HEADER
from sensorhub.keys import Keys
from sensorhub.pipeline.collector import Tuning
from sensorhub.reading import parse
from sensorhub.settings import Settings
from tests.support.broker import close_connections, holds, publish, queue_counts, rabbitmqctl
from tests.support.collector import running_collector
from tests.support.launch import Launcher
from tests.support.ledger import stored_ids
from tests.support.readings import body, reading
from tests.support.services import RedisServer
from tests.support.waiting import logged, wait_until


async def test_reading_is_stored_under_its_user_with_ttl_log_and_notification(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """One reading: data key with TTL, a log entry naming it, and a notification naming both."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.notify("user1"))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    raw = body(id="r-1", ts="2026-11-27T10:00:00.5+00:00", extra="ignored")
    async with running_collector(settings):
        await publish(amqp, settings.queue, [raw])
        message = await wait_until(lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1))
    await pubsub.aclose()

    data_key = f"{settings.namespace}:{{user1}}:data:1795773600500:r-1"
    assert json.loads(await redis.get(data_key)) == msgspec.to_builtins(parse(raw))
    assert "extra" not in json.loads(await redis.get(data_key))
    assert 3590 < await redis.ttl(data_key) <= 3600
    [(log_id, fields)] = await redis.xrange(keys.log("user1"))
    assert fields == {b"key": data_key.encode()}
    assert json.loads(message["data"]) == {
        "keys": [data_key],
        "last_id": log_id.decode(),
        "after": "0-0",  # the log was empty: a dashboard at 0-0 needs nothing more than this message
        "ids": [log_id.decode()],
        "readings": [json.loads(await redis.get(data_key))],
    }
    assert message["channel"].decode() == f"{settings.namespace}:{{user1}}:notify"


async def test_a_notification_goes_out_when_someone_listens_on_the_channel_or_a_pattern(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Unheard, a reading is stored and logged but not announced (the metric says so); a pattern
    subscriber hears the next, whose `after` is the unannounced one's log entry."""

    def counted(metric: str) -> float:
        return REGISTRY.get_sample_value(f"sensorhub_{metric}_total", {"user": "user1"}) or 0.0

    pubsub = redis.pubsub()
    async with running_collector(settings):
        stored, announced = counted("readings_stored"), counted("notifications_published")
        await publish(amqp, settings.queue, [body(id="unheard")])
        await wait_until(lambda: counted("readings_stored") == stored + 1, what="the unheard reading counted")
        assert counted("notifications_published") == announced
        await pubsub.psubscribe(f"{settings.namespace}:{{*}}:notify")
        await pubsub.get_message(timeout=1)  # the psubscribe confirmation
        await publish(amqp, settings.queue, [body(id="heard")])
        message = await wait_until(lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1))
        # The notification leaves Redis before the script's reply reaches the collector, which counts
        # a batch's stored and announced readings together once it has the reply.
        await wait_until(lambda: counted("readings_stored") == stored + 2, what="the heard reading counted")
        assert counted("notifications_published") == announced + 1
    await pubsub.aclose()

    assert await stored_ids(redis, keys, "user1") == ["unheard", "heard"]
    (unheard_id, _), (heard_id, fields) = await redis.xrange(keys.log("user1"))
    notification = json.loads(message["data"])
    assert notification["keys"] == [fields[b"key"].decode()]
    assert notification["after"] == unheard_id.decode()
    assert notification["last_id"] == heard_id.decode()


async def test_readings_of_many_users_go_to_their_own_keys_and_new_users_need_no_config(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """A batch with several users, one never configured anywhere (user7), lands per user."""
    users = ["user1", "user2", "user7"]
    bodies = [body(user=users[i % 3], id=f"m{i}") for i in range(300)]
    async with running_collector(settings):
        await publish(amqp, settings.queue, bodies)
        await wait_until(lambda: redis.xlen(keys.log("user7")), what="user7's log")
        await wait_until(lambda: logged(redis, keys, 300, users))
    for n, user in enumerate(users):
        assert await stored_ids(redis, keys, user) == [f"m{i}" for i in range(n, 300, 3)]
        pattern = f"{settings.namespace}:{{{user}}}:data:*"
        assert len([k async for k in redis.scan_iter(match=pattern)]) == 100


async def test_redelivered_reading_is_stored_and_logged_once(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """The same user, ts and id twice (as after a redelivery) gives one key and one log entry."""
    raw = body(id="twice")
    async with running_collector(settings):
        await publish(amqp, settings.queue, [raw, raw])
        await publish(amqp, settings.queue, [raw, body(id="after")])
        await wait_until(lambda: logged(redis, keys, 2, ["user1"]))
        await asyncio.sleep(0.2)
    assert await stored_ids(redis, keys, "user1") == ["twice", "after"]
    assert await queue_counts(amqp, settings.queue) == (0, 0)


async def test_invalid_messages_are_dead_lettered_with_reason_and_good_ones_around_them_stored(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Bad messages go to <queue>.dlq with their original body and an x-sensorhub-error header."""
    bad = [b"{not json", b"\xff\xfe", body(temperature=500), b"", b"x" * 100_000]
    good = [body(id=f"g{i}") for i in range(6)]
    mixed = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3], good[4], bad[4], good[5]]
    async with running_collector(settings):
        await publish(amqp, settings.queue, mixed)
        await wait_until(lambda: logged(redis, keys, 6, ["user1"]))
        await wait_until(lambda: holds(amqp, settings.dlq, 5), what="5 dead letters")
    assert await stored_ids(redis, keys, "user1") == [f"g{i}" for i in range(6)]

    dead = []
    for _ in range(5):
        got = await amqp.basic_get(settings.dlq, no_ack=True)
        dead.append((got.body, got.header.properties.headers[ERROR_HEADER]))
    assert [b for b, _ in dead] == bad
    reasons = [r.decode() if isinstance(r, bytes) else r for _, r in dead]
    assert "not valid JSON" in reasons[0]
    assert "not UTF-8" in reasons[1]
    assert "<= 70" in reasons[2]
    assert "$.temperature" in reasons[2]
    assert "empty" in reasons[3]
    assert "over the 65536-byte limit" in reasons[4]
    assert await queue_counts(amqp, settings.queue) == (0, 0)


async def test_log_entries_older_than_the_ttl_are_trimmed(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """With a 1 s TTL, the next write trims log entries whose readings have expired."""
    short = replace(settings, ttl_seconds=1)
    async with running_collector(short):
        await publish(amqp, settings.queue, [body(id=f"old{i}") for i in range(5)])
        await wait_until(lambda: logged(redis, keys, 5, ["user1"]))
        assert await redis.ttl(keys.data("user1", parse(body()).ts_ms, "x")) == -2
        await asyncio.sleep(2.1)
        await publish(amqp, settings.queue, [body(id="new")])
        await wait_until(lambda: logged(redis, keys, 1, ["user1"]), what="old entries trimmed")
    assert await stored_ids(redis, keys, "user1") == ["new"]


async def test_a_batch_is_atomic_for_readers(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """A reader never sees data keys without their log entries, or the reverse, mid-stream."""
    pattern = f"{settings.namespace}:{{user1}}:data:*"
    snapshots = []
    await publish(amqp, settings.queue, [body(id=f"a{i}") for i in range(3000)])
    async with running_collector(settings, Tuning(max_batch=50)):
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                data_keys, logged = await pipe.keys(pattern).xlen(keys.log("user1")).execute()
            snapshots.append((len(data_keys), logged))
            if logged == 3000:
                break
            await asyncio.sleep(0.002)
    assert all(n_keys == n_logged for n_keys, n_logged in snapshots), snapshots
    assert len({s for s in snapshots}) > 1, "the reader saw no intermediate state"


async def test_while_redis_is_down_nothing_is_acknowledged_and_all_arrives_after(
    settings: Settings,
    keys: Keys,
    amqp: aiormq.abc.AbstractChannel,
    redis_server: RedisServer,
) -> None:
    """Redis stopped: readings wait unacknowledged in RabbitMQ; Redis back: every one is stored once."""
    own = replace(settings, redis_url=redis_server.url)
    redis = Redis.from_url(redis_server.url)
    async with running_collector(own) as collector:
        await publish(amqp, settings.queue, [body(id=f"before{i}") for i in range(10)])
        await wait_until(lambda: logged(redis, keys, 10, ["user1"]))
        redis_server.stop()
        await publish(amqp, settings.queue, [body(id=f"during{i}") for i in range(50)])
        await wait_until(lambda: not collector.redis_ok, what="collector noticing Redis is down")
        await asyncio.sleep(1)
        assert await queue_counts(amqp, settings.queue) == (0, 1)  # delivered, none acknowledged
        redis_server.start()
        redis = Redis.from_url(redis_server.url)
        await wait_until(lambda: logged(redis, keys, 60, ["user1"]), timeout=20)
    ids = await stored_ids(redis, keys, "user1")
    assert sorted(ids) == sorted([f"before{i}" for i in range(10)] + [f"during{i}" for i in range(50)])
    await redis.aclose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_the_collector_within_5_s_and_loses_nothing(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    launch: Launcher,
    sig: signal.Signals,
) -> None:
    """SIGTERM/SIGINT mid-stream: exit 0 within 5 s; what it did not store is still in the queue."""
    await publish(amqp, settings.queue, [body(id=f"s{i}") for i in range(20_000)])
    collector = launch.sensorhub("collect")
    await wait_until(lambda: redis.xlen(keys.log("user1")), timeout=15, what="collector started")
    collector.send_signal(sig)
    assert await collector.exit_code(timeout=5) == 0, collector.output
    stored = await redis.xlen(keys.log("user1"))
    ready, consumers = await queue_counts(amqp, settings.queue)
    assert consumers == 0
    assert stored + ready >= 20_000  # acked == stored; the rest is back in the queue

    launch.sensorhub("collect")
    await wait_until(lambda: logged(redis, keys, 20_000, ["user1"]), timeout=60)
    assert sorted(await stored_ids(redis, keys, "user1")) == sorted(f"s{i}" for i in range(20_000))


async def test_two_collectors_on_one_queue_store_each_reading_once(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel
) -> None:
    """Competing consumers: the same result as one collector."""
    bodies = [body(id=f"c{i}", user=f"user{i % 2 + 1}") for i in range(4000)]
    async with running_collector(settings) as first, running_collector(settings) as second:
        await publish(amqp, settings.queue, bodies)
        await wait_until(lambda: logged(redis, keys, 4000, ["user1", "user2"]), timeout=30)
        assert await queue_counts(amqp, settings.queue) == (0, 2)
        del first, second
    assert await stored_ids(redis, keys, "user1") != []
    assert sorted(await stored_ids(redis, keys, "user1")) == sorted(f"c{i}" for i in range(0, 4000, 2))
    assert sorted(await stored_ids(redis, keys, "user2")) == sorted(f"c{i}" for i in range(1, 4000, 2))


async def test_collector_comes_back_after_its_connection_is_closed_by_the_broker(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel, caplog: pytest.LogCaptureFixture
) -> None:
    """`rabbitmqctl close_connection`: the collector reconnects and consumes again by itself."""
    async with running_collector(settings) as collector:
        await publish(amqp, settings.queue, [body(id="before")])
        await wait_until(lambda: logged(redis, keys, 1, ["user1"]))
        closed = await asyncio.to_thread(close_connections, rabbitmqctl, "sensorhub-collector")
        assert closed >= 1
        # The log, not the flag: the collector may be back before rabbitmqctl returns.
        await wait_until(lambda: "rabbitmq session ended" in caplog.text, what="disconnect noticed")
        await wait_until(lambda: collector.rabbitmq_connected, timeout=15, what="reconnected")
        await publish(amqp, settings.queue, [body(id="after")])
        await wait_until(lambda: logged(redis, keys, 2, ["user1"]))
    assert await stored_ids(redis, keys, "user1") == ["before", "after"]


async def test_a_queue_deleted_under_the_collector_is_declared_again_and_consumed(
    settings: Settings, keys: Keys, redis: Redis, amqp: aiormq.abc.AbstractChannel, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker cancels the consumer of a deleted queue: the collector says why, declares the
    queue again and consumes it."""
    caplog.set_level(logging.INFO, logger="sensorhub.collector")
    async with running_collector(settings):
        await publish(amqp, settings.queue, [body(id="before")])
        await wait_until(lambda: logged(redis, keys, 1, ["user1"]))
        await amqp.queue_delete(settings.queue)
        await wait_until(lambda: "consumer cancelled by the broker" in caplog.text, what="cancel noticed")
        consuming = f"consuming {settings.queue}"
        await wait_until(lambda: caplog.text.count(consuming) == 2, timeout=15, what="consuming the new queue")
        await publish(amqp, settings.queue, [body(id="after")])
        await wait_until(lambda: logged(redis, keys, 2, ["user1"]))
    assert await stored_ids(redis, keys, "user1") == ["before", "after"]


def test_reading_helper_is_valid() -> None:
    """The test readings themselves pass validation (so the tests above test the collector)."""
    assert parse(json.dumps(reading()).encode()).user == "user1"
