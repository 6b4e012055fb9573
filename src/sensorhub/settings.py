"""Configuration: read once from the environment, overridden by CLI flags, then passed explicitly."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

USER_PATTERN = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")
NAMESPACE_PATTERN = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
QUEUE_PATTERN = re.compile(r"\A[A-Za-z0-9._:-]{1,200}\Z")


class ConfigError(ValueError):
    """A bad setting: its message is the single line shown to the user."""


@dataclass(frozen=True)
class Settings:
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "sensor_data"
    queue_type: str = "classic"
    ttl_seconds: int = 86400
    namespace: str = ""
    users: tuple[str, ...] = ("user1", "user2")
    redis_cluster: bool = False

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"


# Each setting: environment variable, parser.
def _url(schemes: tuple[str, ...]) -> Any:
    def parse(name: str, raw: str) -> str:
        scheme = urlsplit(raw).scheme
        if scheme not in schemes or not urlsplit(raw).hostname:
            raise ConfigError(f"{name} must be a {' or '.join(schemes)} URL with a host, got {raw!r}")
        return raw

    return parse


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a positive whole number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive whole number of seconds, got {raw!r}")
    return value


def _matching(pattern: re.Pattern[str], what: str, *, allow_empty: bool = False) -> Any:
    def parse(name: str, raw: str) -> str:
        if (allow_empty and raw == "") or pattern.match(raw):
            return raw
        raise ConfigError(f"{name} must be {what}, got {raw!r}")

    return parse


def _users(name: str, raw: str) -> tuple[str, ...]:
    users = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not users:
        raise ConfigError(f"{name} must name at least one user, got {raw!r}")
    for user in users:
        if not USER_PATTERN.match(user):
            raise ConfigError(
                f"{name}: {user!r} is not a valid user id (lowercase letters, digits, '_' or '-', "
                "at most 32, starting with a letter or digit)"
            )
    if len(set(users)) != len(users):
        raise ConfigError(f"{name} names a user twice: {raw!r}")
    return users


def _choice(*choices: str) -> Any:
    def parse(name: str, raw: str) -> str:
        if raw not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def _flag(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


SOURCES: dict[str, tuple[str, Any]] = {
    "amqp_url": ("SENSORHUB_AMQP_URL", _url(("amqp", "amqps"))),
    "redis_url": ("SENSORHUB_REDIS_URL", _url(("redis", "rediss"))),
    "queue": ("SENSORHUB_QUEUE", _matching(QUEUE_PATTERN, "a queue name of [A-Za-z0-9._:-]")),
    "queue_type": ("SENSORHUB_QUEUE_TYPE", _choice("classic", "quorum")),
    "ttl_seconds": ("SENSORHUB_TTL_SECONDS", _positive_int),
    "namespace": (
        "SENSORHUB_NAMESPACE",
        _matching(NAMESPACE_PATTERN, "empty or 1-64 characters of [A-Za-z0-9._-]", allow_empty=True),
    ),
    "users": ("SENSORHUB_USERS", _users),
    "redis_cluster": ("SENSORHUB_REDIS_CLUSTER", _flag),
}


def load(environ: Mapping[str, str], overrides: Mapping[str, str | None] | None = None) -> Settings:
    """Build settings from the environment; a CLI flag (an override that is not None) wins.

    Raises ConfigError naming the variable or flag that is wrong.
    """
    values: dict[str, Any] = {}
    overrides = overrides or {}
    for attr, (env_name, parse) in SOURCES.items():
        flag = overrides.get(attr)
        if flag is not None:
            values[attr] = parse("--" + attr.replace("_", "-"), flag)
        elif env_name in environ:
            values[attr] = parse(env_name, environ[env_name])
    return Settings(**values)


def describe(settings: Settings) -> dict[str, Any]:
    """The settings with passwords hidden, for logs and `doctor`."""
    shown = asdict(settings)
    for name, value in shown.items():
        password = urlsplit(value).password if name.endswith("_url") else None
        if password:
            shown[name] = value.replace(f":{password}@", ":***@", 1)
    return shown


def to_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, for the processes a command starts."""
    env = {}
    for attr, (env_name, _) in SOURCES.items():
        value = getattr(settings, attr)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[env_name] = str(value)
    return env
