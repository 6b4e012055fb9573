"""The command line: a wrong flag or variable gives one line that says what is wrong."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from sensorhub.settings import ConfigError, Settings, load
from sensorhub.supervisor import dashboard_token
from tests.support.processes import in_foreground, printed_urls, run, wait_healthy
from tests.support.services import free_port


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["generate", "--rate", "fast"], {}, "argument --rate: expected a number, got 'fast'"),
        (["generate", "--rate", "-1"], {}, "--rate: expected a finite number of 0 or more"),
        (["generate", "--count", "0"], {}, "--count: expected a number above 0"),
        (["generate", "--users", "User One"], {}, "--users: 'User One' is not a valid user id"),
        (["generate", "--pause-station", "post-9"], {}, "--pause-station must name a station of the generator"),
        (["generate", "--for", "60"], {}, "--for and --pause-after go with --pause-station"),
        (["generate", "--via", "smtp"], {}, "argument --via: invalid choice: 'smtp'"),
        (["collect", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["collect"], {"SENSORHUB_TTL_SECONDS": "a day"}, "SENSORHUB_TTL_SECONDS must be a positive whole number"),
        (["collect"], {"SENSORHUB_AMQP_URL": "http://x"}, "SENSORHUB_AMQP_URL must be a amqp or amqps URL"),
        (["collect", "--redis-url", "localhost"], {}, "--redis-url must be a redis or rediss URL"),
        (["collect"], {"SENSORHUB_QUEUE_TYPE": "stream"}, "SENSORHUB_QUEUE_TYPE must be one of classic, quorum"),
        (["collect"], {"SENSORHUB_NAMESPACE": "a b"}, "SENSORHUB_NAMESPACE must be empty or"),
        (["dashboard", "--user", "user1", "--port", "99999"], {}, "--port: expected a port from 1 to 65535"),
        (["dashboard", "--user", "../etc"], {}, "--user must be a user id"),
        (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_flag_or_variable_gives_one_line_and_exit_2(args: list[str], env: dict[str, str], says: str) -> None:
    """No traceback, no usage dump: one line naming the flag or variable and the bad value."""
    result = run(*args, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert "Traceback" not in result.stderr


def test_flag_overrides_environment() -> None:
    """A CLI flag wins over its environment variable."""
    settings = load({"SENSORHUB_QUEUE": "from_env", "SENSORHUB_TTL_SECONDS": "60"}, {"queue": "from_flag"})
    assert (settings.queue, settings.ttl_seconds) == ("from_flag", 60)


def test_defaults_are_the_documented_ones() -> None:
    """With nothing set, the defaults of the README apply."""
    settings = load({})
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert (settings.queue, settings.dlq, settings.ttl_seconds) == ("sensor_data", "sensor_data.dlq", 86400)
    assert (settings.namespace, settings.users) == ("", ("user1", "user2"))


def test_duplicate_user_is_refused() -> None:
    """A user named twice is a mistake worth stopping for."""
    with pytest.raises(ConfigError, match="names a user twice"):
        load({"SENSORHUB_USERS": "user1,user1"})


def test_doctor_reports_each_check_and_fails_when_a_service_is_missing() -> None:
    """`doctor` prints one line per check, and exits non-zero when RabbitMQ or Redis is unreachable."""
    ok = run("doctor")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[ok  ] RabbitMQ: RabbitMQ 3" in ok.stdout
    assert "[ok  ] Redis: " in ok.stdout
    assert "Redis persistence" in ok.stdout
    broken = run("doctor", "--redis-url", "redis://127.0.0.1:1/0")
    assert broken.returncode == 1
    assert "[FAIL] Redis: not reachable at redis://127.0.0.1:1/0" in broken.stdout
    assert "Traceback" not in broken.stdout + broken.stderr


@pytest.mark.parametrize(
    ("args", "service"),
    [
        (["dlq", "list"], "RabbitMQ"),
        (["dlq", "replay", "--all"], "RabbitMQ"),
        (["bench", "--quick"], "RabbitMQ"),
        (["acl", "--apply"], "Redis"),
        (["bench", "--quick"], "Redis"),
    ],
)
def test_a_service_that_is_down_gives_one_line_and_exit_1(args: list[str], service: str) -> None:
    """RabbitMQ or Redis down: one line naming the service and its URL, password hidden; no traceback."""
    port = free_port()
    env = (
        {"SENSORHUB_AMQP_URL": f"amqp://guest:hunter2@127.0.0.1:{port}/"}
        if service == "RabbitMQ"
        else {"SENSORHUB_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    )
    result = run(*args, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"sensorhub {args[0]}: error: {service} is not reachable at ")
    assert f":***@127.0.0.1:{port}/" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broker_that_never_answers_gives_one_line_and_exit_1() -> None:
    """A RabbitMQ that accepts the socket but never speaks AMQP: one line after the connect timeout, no hang."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        result = run("dlq", "list", env={"SENSORHUB_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/"})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("sensorhub dlq: error: RabbitMQ is not reachable at ")
    assert "no answer to the AMQP handshake" in result.stderr


def test_generate_waits_for_rabbitmq_and_stops_cleanly() -> None:
    """The generator retries by design: it says RabbitMQ is unavailable, then stops on SIGTERM, unfinished (exit 1)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sensorhub", "generate", "--count", "1"],
        env={**os.environ, "SENSORHUB_AMQP_URL": f"amqp://guest:hunter2@127.0.0.1:{port}/"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "rabbitmq unavailable" in first
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
    finally:
        process.kill()
    assert process.returncode == 1
    assert "Traceback" not in first + rest
    assert "hunter2" not in first + rest


def _free_port_pair() -> int:
    """A port P with P + 1 free as well, for `run`'s two dashboards."""
    while True:
        first = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
        return first


def _status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_run_with_a_secret_gives_each_user_a_token_that_opens_only_their_dashboard(settings: Settings) -> None:
    """`sensorhub run` with SENSORHUB_DASHBOARD_TOKEN: user1's printed token is refused by user2's dashboard."""
    port = _free_port_pair()
    run_settings = replace(settings, users=("user1", "user2"), dashboard_token="shared secret")
    with in_foreground(run_settings, "run", "--first-port", str(port), "--rate", "1") as process:
        urls = printed_urls(process, r"  (user[12]) +(http://\S+)", 2, "the dashboards")
        tokens = {user: url.split("?token=")[1] for user, url in urls.items()}
        assert tokens == {user: dashboard_token("shared secret", user) for user in ("user1", "user2")}
        user1, user2 = (f"http://127.0.0.1:{p}" for p in (port, port + 1))
        wait_healthy(user1)
        wait_healthy(user2)
        assert _status(f"{user2}/", tokens["user1"]) == 401
        assert _status(f"{user2}/", "shared secret") == 401
        assert _status(f"{user2}/", tokens["user2"]) == 200
        assert _status(f"{user1}/", tokens["user1"]) == 200
