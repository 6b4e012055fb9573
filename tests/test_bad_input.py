"""Bad input never crashes anything and is kept; loss could never be silent (metrics, logs)."""

from __future__ import annotations

import json
import math
import re
import signal

import aiormq
import httpx
from redis.asyncio import Redis

from sensorhub.broker import ERROR_HEADER
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.broker import holds, publish
from tests.support.launch import Launcher
from tests.support.processes import run
from tests.support.readings import body, reading
from tests.support.services import free_port
from tests.support.waiting import logged, wait_until

BAD = {
    "not JSON": b"temperature=21",
    "not UTF-8": b'{"id": "\xc3\x28"}',
    "NaN": json.dumps(reading(temperature=math.nan)).encode(),
    "Infinity": json.dumps(reading(pressure=math.inf)).encode(),
    "wrong type": body(humidity="45%"),
    "out of range": body(pressure=1200),
    "missing field": json.dumps({k: v for k, v in reading().items() if k != "ts"}).encode(),
    "bad user id": body(user="../user2"),
    "10 MB body": b'{"id":"' + b"x" * (10 * 1024 * 1024) + b'"}',
    "empty body": b"",
    "deeply nested": b'{"extra":' + b"[" * 30000 + b"]" * 30000 + b"}",
    "array": b"[1, 2, 3]",
}


async def test_every_kind_of_bad_message_is_kept_with_its_reason_and_nothing_stops(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    launch: Launcher,
) -> None:
    """Bad messages between good ones: all processes stay up, each bad one is in the DLQ, every good one stored."""
    port = free_port()
    collector = launch.sensorhub("collect", "--http-port", str(port))
    dashboard = launch.dashboard("user1")
    messages, good_ids = [], []
    for n, bad in enumerate(BAD.values()):
        good_ids.append(f"good-{n}")
        messages += [body(id=f"good-{n}"), bad]
    await publish(amqp, settings.queue, messages)

    await wait_until(lambda: holds(amqp, settings.dlq, len(BAD)), timeout=30, what="all bad messages dead-lettered")
    await wait_until(lambda: logged(redis, keys, len(BAD)), what="all good readings stored")
    assert collector.running
    assert dashboard.running
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth) as client:
        ids = [r["id"] for r in (await client.get("/api/readings")).json()["readings"]]
    assert ids == good_ids

    reasons = {}
    for _ in BAD:
        got = await amqp.basic_get(settings.dlq, no_ack=True)
        reason = got.header.properties.headers[ERROR_HEADER]
        reasons[got.body] = reason.decode() if isinstance(reason, bytes) else reason
    for name, raw in BAD.items():
        assert raw in reasons, f"{name} not kept"
        assert reasons[raw], f"{name} has no reason"
    assert "not UTF-8" in reasons[BAD["not UTF-8"]]
    assert "over the 65536-byte limit" in reasons[BAD["10 MB body"]]
    assert "$.user" in reasons[BAD["bad user id"]]
    assert "missing required field `ts`" in reasons[BAD["missing field"]]

    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert f'sensorhub_readings_stored_total{{user="user1"}} {float(len(BAD))}' in metrics
    assert 'sensorhub_dead_lettered_total{reason="too_large"} 1.0' in metrics
    assert 'sensorhub_dead_lettered_total{reason="not_utf8"} 1.0' in metrics
    assert 'sensorhub_dead_lettered_total{reason="empty"} 1.0' in metrics
    assert re.search(r"^sensorhub_lag_seconds_count [1-9]", metrics, re.MULTILINE)
    assert 'sensorhub_notifications_published_total{user="user1"}' in metrics
    collector.send_signal(signal.SIGTERM)
    assert await collector.exit_code(10) == 0
    out = collector.output
    assert out.count("dead-lettered message") == len(BAD)
    assert "Traceback" not in out


async def test_metrics_count_duplicates_depth_and_sse_clients(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    launch: Launcher,
) -> None:
    """Collector: duplicates skipped and queue depth; dashboard: SSE clients connected and events sent."""
    port = free_port()
    dashboard = launch.dashboard("user1")
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth, timeout=10) as client:
        async with client.stream("GET", "/events") as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == "retry: 1000"
            launch.sensorhub("collect", "--http-port", str(port))
            twice = body(id="dup")
            await publish(amqp, settings.queue, [twice, twice])
            await wait_until(lambda: logged(redis, keys, 1))
            seen = []
            async for line in lines:
                seen.append(line)
                if line.startswith("data:"):
                    break
            text = (await client.get("/metrics")).text
        assert 'sensorhub_sse_clients{user="user1"} 1.0' in text
        assert 'sensorhub_sse_events_sent_total{user="user1"} 1.0' in text

    async def collector_metrics() -> str:
        async with httpx.AsyncClient() as plain:
            return (await plain.get(f"http://127.0.0.1:{port}/metrics")).text

    text = await wait_until(collector_metrics)
    assert 'sensorhub_readings_stored_total{user="user1"} 1.0' in text
    assert 'sensorhub_duplicates_skipped_total{user="user1"} 1.0' in text
    assert f'sensorhub_queue_depth{{queue="{settings.queue}"}} 0.0' in text


def test_json_log_format_is_one_json_object_per_line(settings: Settings) -> None:
    """--log-format json: every log line parses as JSON with time, level, logger and message."""
    result = run("generate", "--count", "5", "--rate", "0", "--log-format", "json", settings=settings)
    assert result.returncode == 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines
    assert {"time", "level", "logger", "message"} <= set(lines[-1])
    assert lines[-1]["message"] == "generator stopped: 5 readings confirmed by the broker"
