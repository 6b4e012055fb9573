"""The command line: a wrong flag or variable gives one line that says what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sensorhub.settings import ConfigError, load


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sensorhub", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["generate", "--rate", "fast"], {}, "argument --rate: expected a number, got 'fast'"),
        (["generate", "--rate", "-1"], {}, "--rate: expected a finite number of 0 or more"),
        (["generate", "--count", "0"], {}, "--count: expected a number above 0"),
        (["generate", "--users", "User One"], {}, "--users: 'User One' is not a valid user id"),
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
