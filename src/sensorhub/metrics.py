"""Prometheus metrics, so that a loss or a backlog is never silent."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

READINGS_STORED = Counter("sensorhub_readings_stored", "Readings stored in Redis", ["user"])
DUPLICATES_SKIPPED = Counter("sensorhub_duplicates_skipped", "Redelivered readings that were already stored", ["user"])
DEAD_LETTERED = Counter("sensorhub_dead_lettered", "Messages set aside in the dead-letter queue", ["reason"])
ALERTS = Counter("sensorhub_alerts", "Alert transitions logged by sensorhub alerts", ["user", "state"])
NOTIFICATIONS = Counter("sensorhub_notifications_published", "Pub/Sub notifications published", ["user"])
RABBITMQ_NOTIFICATIONS = Counter(
    "sensorhub_rabbitmq_notifications",
    "Notifications published to users' RabbitMQ queues, by outcome: confirmed, returned (no queue took it), refused",
    ["user", "outcome"],
)
# Not per user: 17 series a user made /metrics 12 MB and 1.6 s of the collector's CPU with 10,000
# users, and each new user's buckets cost the collector 50 µs. The counters above say who is behind.
LAG = Histogram(
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


class PerUser(Generic[M]):
    """A labelled metric's child for each user, looked up once per process: with a user of its own
    for each reading (10,000 users), `labels()` per reading (a lock and a key each time) took the
    collector about a tenth of its time."""

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[str, M] = {}

    def __call__(self, user: str) -> M:
        child = self._children.get(user)
        if child is None:
            child = self._children[user] = self._metric.labels(user)
        return child
