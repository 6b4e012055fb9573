"""Stations over MQTT: their topics, the routing keys RabbitMQ's MQTT plugin turns them into, their
account names, and the rule that the topic is authoritative (a station cannot speak for another).

A station publishes to `sensors/<user>/<station>`; the plugin carries it to `amq.topic` with routing
key `sensors.<user>.<station>`, where the readings queue is bound (see broker.declare). With a
namespace `ns` (SENSORHUB_NAMESPACE, as for Redis keys) everything begins with it: topic
`ns/sensors/...`, routing key `ns.sensors...`, account `ns/<user>.<station>`, so that deployments
(and tests) sharing one broker never receive each other's stations.
"""

from __future__ import annotations

import re

from sensorhub.reading import InvalidReading, Reading

TOPIC_EXCHANGE = "amq.topic"  # where RabbitMQ's MQTT plugin publishes
# A station id that is one MQTT topic level and one routing-key word as it is: no '/', '.', '+' or '#'.
STATION_PATTERN = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
# RabbitMQ 3.10's plugin turns each '/' of an MQTT topic into '.' in the routing key (a '.' stays '.').
_TO_KEY = str.maketrans("/", ".")


class Topics:
    """The MQTT names of one namespace's stations."""

    def __init__(self, namespace: str = "") -> None:
        self._topic_prefix = f"{namespace}/" if namespace else ""
        self._key_prefix = self._topic_prefix.translate(_TO_KEY)
        # Not ':' — the MQTT plugin reads `vhost:user` in a username.
        self._user_prefix = self._topic_prefix

    def topic(self, user: str, station: str) -> str:
        """The MQTT topic the station publishes to."""
        return f"{self._topic_prefix}sensors/{user}/{station}"

    def routing_key(self, user: str, station: str) -> str:
        """The routing key its messages arrive with on amq.topic."""
        return self.topic(user, station).translate(_TO_KEY)

    @property
    def binding_key(self) -> str:
        """What the readings queue is bound to amq.topic with: every station's routing key."""
        return f"{self._key_prefix}sensors.*.*"

    def username(self, user: str, station: str) -> str:
        """The station's RabbitMQ (and MQTT) user name; a user id has no '.', so it reads back unambiguously."""
        return f"{self._user_prefix}{user}.{station}"

    def owner(self, username: str) -> tuple[str, str] | None:
        """(user, station) of a station account name of this namespace, else None."""
        if not username.startswith(self._user_prefix) or "/" in username[len(self._user_prefix) :]:
            return None
        user, dot, station = username[len(self._user_prefix) :].partition(".")
        return (user, station) if dot else None

    def check(self, reading: Reading, exchange: str | None, key: str | None) -> Reading:
        """The reading, if it came on the topic of its own user and station (or not over MQTT at all).

        Raises InvalidReading("topic_mismatch") otherwise: the topic is what the broker let that
        station's credentials publish to, the body is only what the station claims.
        """
        if exchange != TOPIC_EXCHANGE or key == self.routing_key(reading.user, reading.station):
            return reading
        raise InvalidReading(
            "topic_mismatch",
            f"body is for user {reading.user!r}, station {reading.station!r}, but came on topic "
            f"{(key or '').replace('.', '/')!r}; a station may publish only its own readings",
        )
