"""Stations over MQTT: their topics, the routing keys RabbitMQ's MQTT plugin turns them into, and the
rule that the topic is authoritative (a station cannot speak for another station or user).

A station publishes to `sensors/<user>/<station>`; the plugin carries it to `amq.topic` with routing
key `sensors.<user>.<station>`, where the readings queue is bound (see broker.declare).
"""

from __future__ import annotations

import re

from sensorhub.reading import InvalidReading, Reading

TOPIC_EXCHANGE = "amq.topic"  # where RabbitMQ's MQTT plugin publishes
BINDING_KEY = "sensors.*.*"  # every station's routing key
# A station id that is one MQTT topic level and one routing-key word as it is: no '/', '.', '+' or '#'.
STATION_PATTERN = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def topic(user: str, station: str) -> str:
    """The MQTT topic the station publishes to."""
    return f"sensors/{user}/{station}"


def routing_key(user: str, station: str) -> str:
    """The routing key its messages arrive with on amq.topic."""
    return f"sensors.{user}.{station}"


def username(user: str, station: str) -> str:
    """The station's RabbitMQ (and MQTT) user name; a user id has no '.', so it reads back unambiguously."""
    return f"{user}.{station}"


def check_topic(reading: Reading, exchange: str | None, key: str | None) -> Reading:
    """The reading, if it came on the topic of its own user and station (or not over MQTT at all).

    Raises InvalidReading("topic_mismatch") otherwise: the topic is what the broker let that
    station's credentials publish to, the body is only what the station claims.
    """
    if exchange != TOPIC_EXCHANGE:
        return reading
    if key != routing_key(reading.user, reading.station):
        # The plugin swaps '/' and '.' between MQTT topics and routing keys: show the topic as sent.
        sent = (key or "").translate(str.maketrans("./", "/."))
        raise InvalidReading(
            "topic_mismatch",
            f"body is for user {reading.user!r}, station {reading.station!r}, but came on topic {sent!r}; "
            "a station may publish only its own readings",
        )
    return reading
