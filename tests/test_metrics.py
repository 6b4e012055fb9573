"""Metrics kept as plain numbers read the same on /metrics as prometheus_client's own."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sensorhub.metrics import BatchHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
lags = st.one_of(st.sampled_from(BUCKETS), st.floats(-10, 1000, allow_nan=False))


def _exposition(registry: CollectorRegistry) -> list[str]:
    """/metrics lines, but the `_created` timestamp that only the library's histogram has."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(lags, max_size=20), max_size=5))
def test_a_batch_histogram_reads_like_a_histogram_observed_one_value_at_a_time(batches: list[list[float]]) -> None:
    """Same buckets (a value equal to a bound counts in that bucket), count and sum."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch_histogram = BatchHistogram("lag_seconds", "lag", BUCKETS, registry=ours)
    histogram = Histogram("lag_seconds", "lag", buckets=BUCKETS, registry=theirs)
    for batch in batches:
        batch_histogram.observe_all(batch)
        for value in batch:
            histogram.observe(value)
    assert _exposition(ours) == _exposition(theirs)
