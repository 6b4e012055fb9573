"""`make run` and stations over MQTT: scripts/services.sh enables RabbitMQ's MQTT plugin and management
API on a running local broker (here a node of this module's own), never over another server's port,
and `sensorhub run` says where MQTT listens or why it does not."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import replace

import pytest

from sensorhub import supervisor
from sensorhub.settings import Settings, to_env
from tests.support.processes import run
from tests.support.services import RABBITMQCTL, RabbitNode, free_port, wait_for_port

RABBITMQ_PLUGINS = "/usr/lib/rabbitmq/bin/rabbitmq-plugins"


def services(node: Settings, env: dict[str, str], mqtt_port: int) -> subprocess.CompletedProcess[str]:
    """`bash scripts/services.sh` (what `make run` runs first) for that node."""
    return subprocess.run(
        ["bash", "scripts/services.sh"],
        env={**env, **to_env(replace(node, mqtt_port=mqtt_port))},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(300)  # a node's boot, three `services.sh` runs, two plugin enables and a restart
def test_make_run_enables_mqtt_on_the_local_broker_and_says_on_which_port(
    settings: Settings, rabbit_node: RabbitNode
) -> None:
    """A port another server holds is left alone, with the way out; a free one gets RabbitMQ's MQTT
    listener at once (no restart), and keeps it after a restart."""
    on_node = replace(settings, amqp_url=rabbit_node.url, rabbitmq_api_url=f"http://127.0.0.1:{free_port()}/")
    env = {**rabbit_node.env, "SENSORHUB_RABBITMQCTL": RABBITMQCTL, "SENSORHUB_RABBITMQ_PLUGINS": RABBITMQ_PLUGINS}
    with socket.create_server(("127.0.0.1", 0)) as other_broker:
        taken = other_broker.getsockname()[1]
        first = services(on_node, env, taken)
        assert first.returncode == 0, first.stderr
        assert f"services: port {taken} is taken by another server" in first.stderr
        assert "SENSORHUB_MQTT_PORT=1884 make run" in first.stderr
        status = supervisor.mqtt_status(replace(on_node, mqtt_port=taken))
        assert not status.available
        assert f"off: port {taken} is taken by another server" in status.line
    port = free_port()
    second = services(on_node, env, port)
    assert second.returncode == 0, second.stderr
    assert "enabling rabbitmq_mqtt on RabbitMQ" in second.stdout
    wait_for_port(port, 30)
    status = supervisor.mqtt_status(replace(on_node, mqtt_port=port))
    assert status.available
    assert f"at 127.0.0.1:{port}" in status.line
    elsewhere = supervisor.mqtt_status(replace(on_node, mqtt_port=taken))
    assert elsewhere.line == (
        f"RabbitMQ's MQTT plugin listens on {port}, not on {taken}: run with SENSORHUB_MQTT_PORT={port}"
    )
    _, lines = supervisor.plan(replace(on_node, mqtt_port=port), 10.0, 9000, mqtt=status)
    assert f"  mqtt        {status.line}" in lines
    assert any("as stations do: over MQTT" in line for line in lines)
    assert services(on_node, env, port).stdout.count("enabling") == 0  # once is enough
    rabbit_node.restart()
    wait_for_port(port, 30)
    added = run("station", "add", "--user", "u", "--station", "s", settings=replace(on_node, mqtt_port=port))
    assert added.returncode == 0, added.stderr  # the management API is back too


def test_sensorhub_run_says_when_the_management_api_does_not_answer(settings: Settings) -> None:
    """Without the API, MQTT is off and the generator publishes over AMQP; the line says what to do."""
    down = replace(settings, rabbitmq_api_url="http://127.0.0.1:1/")
    status = supervisor.mqtt_status(down)
    assert not status.available
    assert status.line.startswith("off: RabbitMQ's management API does not answer at http://127.0.0.1:1/")
    children, lines = supervisor.plan(down, 10.0, 9000, mqtt=status)
    generator = next(c for c in children if c.name == "generator")
    assert generator.args[:5] == ["generate", "--rate", "10.0", "--via", "amqp"]
    assert generator.args[5:] == ["--pause-station", "user1/post-02", "--pause-after", "30", "--for", "60"]
    assert "              user1/post-02 goes silent 30 s after start, for 60 s (a station going offline)" in lines
