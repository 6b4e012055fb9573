"""The collector's consuming connection (pika) on its own: what it does when the broker does not answer."""

from __future__ import annotations

import socket
from dataclasses import replace

import pika.exceptions
import pytest

from sensorhub import broker
from sensorhub.queue_consumer import QueueConsumer
from sensorhub.settings import Settings


async def test_a_broker_that_never_answers_the_handshake_is_given_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that is accepted but never spoken to: an AMQP error after CONNECT_TIMEOUT, not a hang."""
    monkeypatch.setattr(broker, "CONNECT_TIMEOUT", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        consumer = QueueConsumer(replace(settings, amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/"), "test")
        with pytest.raises(pika.exceptions.AMQPConnectionError, match="no answer to the AMQP handshake"):
            await consumer.start(settings.queue, 10, lambda _delivery: None)
