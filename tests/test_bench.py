"""`sensorhub bench` measures every figure it promises and leaves nothing behind."""

from __future__ import annotations

import json
import os

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from sensorhub.keys import Keys
from sensorhub.settings import load
from sensorhub.tools.bench import LAYOUT_SCRIPT
from tests.support.broker import rabbitmqctl
from tests.support.processes import run


@pytest.mark.timeout(300)  # some twenty processes started in turn: the suite's 120 s is tight on a slow machine
def test_a_small_bench_run_reports_every_figure_and_cleans_up() -> None:
    """A tiny run prints all keys of the JSON report with plausible values, and deletes its queues and keys."""
    result = run(
        "bench",
        "--readings",
        "3000",
        "--seconds",
        "2",
        "--rates",
        "300,200",
        "--clients",
        "5",
        "--web-users",
        "20",
        "--json",
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for key in ("broker_drain_per_s", "collector_per_s", "collectors2_per_s", "ratio", "generator_per_s"):
        assert report[key] > 0, key
    assert set(report["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["fanout"]["clients"] == 5
    assert report["fanout"]["delivered_fraction"] == 1.0
    assert set(report["collector_rss_mb"]) == {"start", "end"}
    assert "[bench] fanout" in result.stderr
    assert set(report["web"]) == {"users", "clients", "delivered_fraction", "p99_ms", "rss_mb", "cpu"}
    assert (report["web"]["users"], report["web"]["clients"]) == (20, 20)
    assert report["web"]["delivered_fraction"] == 1.0  # each viewer got its own user's readings, and only those
    assert report["web"]["p99_ms"] > 0
    assert report["web"]["rss_mb"] > 0
    assert report["web"]["cpu"] > 0

    assert set(report["latency_by_rate_ms"]) == {"300", "200"}
    assert report["latency_by_rate_ms"]["300"] == report["latency_ms"]
    assert report["latency_rate"] == 300
    for figures in report["latency_by_rate_ms"].values():
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"]
    cpu = report["cpu_us_per_reading"]
    assert set(cpu) == {"collector", "dashboard", "generator", "rabbitmq", "redis"}
    for name in ("collector", "dashboard", "generator"):  # ours: always found on this machine
        assert cpu[name] > 0, name
    assert all(value is None or value >= 0 for value in cpu.values())
    assert report["cpu_rate"] == 300  # the highest of --rates
    assert report["cpu_readings"] >= 0.7 * 300 * 2  # from 10 % to 90 % of the stage's readings, whatever came before
    many_users = report["many_users"]
    assert many_users["users"] == 10_000
    assert len(many_users["trials"]) == 3
    assert all(t["collector_per_s"] > 0 and t["two_users_per_s"] > 0 for t in many_users["trials"])
    assert many_users["collector_per_s"] == sorted(t["collector_per_s"] for t in many_users["trials"])[1]
    assert many_users["ratio_to_two_users"] == sorted(t["ratio"] for t in many_users["trials"])[1]
    assert report["redis_bytes_per_reading"] > 0
    trials = report["ratio_trials"]
    assert len(trials) == 3
    assert all(t["drain_per_s"] > 0 and t["collector_per_s"] > 0 for t in trials)
    assert report["ratio"] == sorted(t["ratio"] for t in trials)[1]
    ceiling = report["store_ceiling"]
    assert len(ceiling["trials"]) == 3
    assert all(t["drain_per_s"] > 0 and t["per_s"] > 0 for t in ceiling["trials"])
    assert ceiling["per_s"] == sorted(t["per_s"] for t in ceiling["trials"])[1]
    assert ceiling["ratio_to_drain"] == sorted(t["ratio"] for t in ceiling["trials"])[1]

    assert "sensorhub-bench." not in rabbitmqctl("list_queues", "name")
    assert not list(Redis.from_url(load(os.environ).redis_url).scan_iter(match="bench-*", count=1000))


async def test_the_store_ceiling_writes_what_the_layout_asks_of_each_reading(redis: AsyncRedis, keys: Keys) -> None:
    """The ceiling stage stands for any collector keeping the layout only if it does that work: each
    data key written once, with the TTL, and one log entry naming it; a redelivered batch adds nothing."""
    script = redis.register_script(LAYOUT_SCRIPT)
    data = [keys.data("user1", ts_ms, "r") for ts_ms in (1, 2)]
    for _ in range(2):
        await script(keys=[keys.log("user1"), *data], args=[60, b"one", b"two"])
    assert [await redis.get(key) for key in data] == [b"one", b"two"]
    assert all(0 < ttl <= 60 for ttl in [await redis.ttl(key) for key in data])
    assert [fields[b"key"].decode() for _, fields in await redis.xrange(keys.log("user1"))] == data
