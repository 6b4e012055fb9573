"""`sensorhub bench` measures every figure it promises and leaves nothing behind."""

from __future__ import annotations

import json
import os

from redis import Redis

from sensorhub.settings import load
from tests.support.broker import rabbitmqctl
from tests.support.processes import run


def test_a_small_bench_run_reports_every_figure_and_cleans_up() -> None:
    """A tiny run prints all keys of the JSON report with plausible values, and deletes its queues and keys."""
    result = run(
        "bench", "--readings", "3000", "--seconds", "2", "--rate", "300", "--clients", "5", "--json", timeout=180
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

    assert "sensorhub-bench." not in rabbitmqctl("list_queues", "name")
    assert not list(Redis.from_url(load(os.environ).redis_url).scan_iter(match="bench-*", count=1000))
