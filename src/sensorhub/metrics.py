"""Prometheus metrics, so that a loss or a backlog is never silent."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class UserCounts(Collector):
    """A counter by user, kept as plain numbers and turned into samples when /metrics is read (a
    custom collector, in prometheus_client's terms). The collector adds to three of these for every
    user of every batch: with a user of its own for each reading (10,000 users), a `Counter` child
    per user cost about 5 µs to make and 1 µs, with its lock and checks, each time it counted.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self._counts: dict[str, float] = {}
        REGISTRY.register(self)

    def add(self, user: str, amount: float = 1) -> None:
        self._counts[user] = self._counts.get(user, 0) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=["user"])
        for user, count in self._counts.copy().items():  # a copy: /metrics may be read from another thread
            family.add_metric([user], count)
        yield family


class BatchHistogram(Collector):
    """A histogram observed a batch of values at a time, kept as plain numbers and turned into
    samples when /metrics is read. The collector observes every reading's lag; a `Histogram` takes
    one value a call, with a lock and a linear search of its buckets: a batch of sixty lags cost
    3.3 µs a reading that way and 0.9 here, about 4 % of the collector's CPU at 3,000 readings/s.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # the last: above every bound
        self._sum = 0.0
        registry.register(self)

    def observe_all(self, values: Iterable[float]) -> None:
        counts, bounds, total = self._counts, self._bounds, self._sum
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value
            total += value  # added in turn, as one call a value would: the same sum to the last bit
        self._sum = total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative = list(accumulate(self._counts.copy()))  # a copy: /metrics may be read from another thread
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=list(zip(bounds, cumulative, strict=True)), sum_value=self._sum
        )


READINGS_STORED = UserCounts("sensorhub_readings_stored", "Readings stored in Redis")
DUPLICATES_SKIPPED = UserCounts("sensorhub_duplicates_skipped", "Redelivered readings that were already stored")
DEAD_LETTERED = Counter("sensorhub_dead_lettered", "Messages set aside in the dead-letter queue", ["reason"])
ALERTS = Counter("sensorhub_alerts", "Alert transitions logged by sensorhub alerts", ["user", "state"])
NOTIFICATIONS = UserCounts(
    "sensorhub_notifications_published", "Pub/Sub notifications published (to a channel someone listened on)"
)
RABBITMQ_NOTIFICATIONS = Counter(
    "sensorhub_rabbitmq_notifications",
    "Notifications published to users' RabbitMQ queues, by outcome: confirmed, returned (no queue took it), refused",
    ["user", "outcome"],
)
# Not per user: 17 series a user made /metrics 12 MB and 1.6 s of the collector's CPU with 10,000
# users, and each new user's buckets cost the collector 50 µs. The counters above say who is behind.
LAG = BatchHistogram(
    "sensorhub_lag_seconds",
    "Now minus the reading's ts when the collector stored it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
QUEUE_DEPTH = Gauge("sensorhub_queue_depth", "Messages ready in the readings queue", ["queue"])
BATCH_SIZE = Histogram(
    "sensorhub_batch_size", "Messages per collector batch", buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000)
)

SSE_CLIENTS = Gauge("sensorhub_sse_clients", "Server-Sent Events clients connected", ["user"])
SSE_EVENTS = Counter("sensorhub_sse_events_sent", "Reading events sent to SSE clients", ["user"])

WEBHOOK_DELIVERIES = Counter(
    "sensorhub_webhook_deliveries",
    "Webhook requests by result: delivered (2xx), rejected (other status), timeout, unreachable, gone (410)",
    ["user", "outcome"],
)
WEBHOOK_READINGS = Counter("sensorhub_webhook_readings_delivered", "Readings delivered to webhook endpoints", ["user"])
WEBHOOK_EXPIRED = Counter(
    "sensorhub_webhook_readings_expired", "Readings that expired (TTL) before their endpoint took them", ["user"]
)
WEBHOOK_ATTEMPTS = Histogram(
    "sensorhub_webhook_attempts",
    "Requests a webhook message took until a 2xx",
    ["user"],
    buckets=(1, 2, 3, 5, 10, 20, 50),
)
WEBHOOK_BACKLOG = Gauge(
    "sensorhub_webhook_backlog", "Log entries an endpoint has not received yet", ["user", "endpoint"]
)
WEBHOOK_LAG = Gauge(
    "sensorhub_webhook_lag_seconds", "Age of the oldest reading an endpoint has not received yet", ["user", "endpoint"]
)
WEBHOOK_ENDPOINTS = Gauge("sensorhub_webhook_endpoints", "Endpoints this push process delivers to now")
WS_CLIENTS = Gauge("sensorhub_ws_clients", "WebSocket clients connected", ["user"])
WS_EVENTS = Counter("sensorhub_ws_events_sent", "Reading events sent to WebSocket clients", ["user"])
WEB_WATCHED_USERS = Gauge("sensorhub_web_watched_users", "Users `sensorhub web` holds a feed for now")
