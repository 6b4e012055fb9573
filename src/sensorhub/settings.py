"""Configuration: read once from the environment, overridden by CLI flags, then passed explicitly.

Each setting is declared once, as a field of `Settings`: its type (with the constraints msgspec
checks), its default, and a `Source` (variable, flag, how its text becomes a value). The variable
names, the flags, `load`, `to_env` and the error messages all come from that one declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Literal, TypeVar, get_type_hints
from urllib.parse import SplitResult, urlsplit

import msgspec

USER_PATTERN = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")
NAMESPACE_PATTERN = re.compile(r"\A[A-Za-z0-9._-]{0,64}\Z")
QUEUE_PATTERN = re.compile(r"\A[A-Za-z0-9._:-]{1,200}\Z")

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad setting: its message is the single line shown to the user."""


class Invalid(ValueError):
    """A value that "must be ..., got ..." would describe badly: the rest of the line after its name."""


@dataclass(frozen=True)
class Source:
    """Where a setting comes from and how its text becomes a value.

    `parse` turns the text into the field's shape (raising ValueError); msgspec then checks the
    constraints of the field's type. `must_be` completes "NAME must be ..., got 'text'".
    """

    env: str
    must_be: str = ""
    parse: Callable[[str], object] = str
    flag: str = ""
    help: str = ""
    secret: bool = False


def setting(default: T, source: Source) -> T:
    return field(default=default, metadata={"source": source})


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError
        return raw

    return parse


def _url_list(*schemes: str) -> Callable[[str], str]:
    """A comma-separated list of URLs (one is a list of one): each checked, the text kept as given."""
    one = _url(*schemes)

    def parse(raw: str) -> str:
        urls = [u.strip() for u in raw.split(",")]
        for n, url in enumerate(urls, 1):
            try:
                one(url)
            except ValueError:
                if len(urls) == 1:
                    raise
                raise Invalid(
                    f" must be a comma list of {' or '.join(schemes)} URLs with a host: URL {n} of {len(urls)} "
                    f"is {_hide_password(url)!r}"
                ) from None
        return ",".join(urls)

    return parse


def _hide_password(url: str) -> str:
    password = urlsplit(url).password if "://" in url else None
    return url.replace(f":{password}@", ":***@", 1) if password else url


def _users(raw: str) -> tuple[str, ...]:
    users = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not users:
        raise Invalid(f" must name at least one user, got {raw!r}")
    for user in users:
        if not USER_PATTERN.match(user):
            raise Invalid(
                f": {user!r} is not a valid user id (lowercase letters, digits, '_' or '-', "
                "at most 32, starting with a letter or digit)"
            )
    if len(set(users)) != len(users):
        raise Invalid(f" names a user twice: {raw!r}")
    return users


NOTIFY_TARGETS = ("redis", "rabbitmq")


def _notify(raw: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in raw.split(",") if t.strip())
    unknown = [t for t in targets if t not in NOTIFY_TARGETS]
    if unknown or not targets:
        raise Invalid(f" must be a comma list of {', '.join(NOTIFY_TARGETS)}, got {raw!r}")
    return tuple(dict.fromkeys(targets))


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


@dataclass(frozen=True)
class Settings:
    amqp_url: str = setting(
        "amqp://guest:guest@127.0.0.1:5672/",
        Source(
            "SENSORHUB_AMQP_URL",
            "a amqp or amqps URL with a host",
            _url_list("amqp", "amqps"),
            help="a RabbitMQ URL, or a comma list of the URLs of a cluster's nodes: the first that answers is "
            "used, another when its node goes away (default: $SENSORHUB_AMQP_URL)",
        ),
    )
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        Source("SENSORHUB_REDIS_URL", "a redis or rediss URL with a host", _url("redis", "rediss")),
    )
    queue: Annotated[str, msgspec.Meta(pattern=QUEUE_PATTERN.pattern)] = setting(
        "sensor_data", Source("SENSORHUB_QUEUE", "a queue name of [A-Za-z0-9._:-]")
    )
    queue_type: Literal["classic", "quorum"] = setting(
        "classic", Source("SENSORHUB_QUEUE_TYPE", "one of classic, quorum")
    )
    ttl_seconds: Annotated[int, msgspec.Meta(gt=0)] = setting(
        86400, Source("SENSORHUB_TTL_SECONDS", "a positive whole number of seconds", int)
    )
    namespace: Annotated[str, msgspec.Meta(pattern=NAMESPACE_PATTERN.pattern)] = setting(
        "", Source("SENSORHUB_NAMESPACE", "empty or 1-64 characters of [A-Za-z0-9._-]")
    )
    users: tuple[str, ...] = setting(("user1", "user2"), Source("SENSORHUB_USERS", parse=_users))
    redis_cluster: bool = setting(False, Source("SENSORHUB_REDIS_CLUSTER", "true or false", _flag))
    # >= 1: the collector acks a batch only once WAIT says that many replicas of each master it wrote to have it.
    redis_min_replicas: Annotated[int, msgspec.Meta(ge=0)] = setting(
        0,
        Source(
            "SENSORHUB_REDIS_MIN_REPLICAS",
            "a whole number >= 0",
            int,
            help="replicas that must have a batch (Redis WAIT) before the collector acknowledges it to RabbitMQ; "
            "0: do not wait (default: $SENSORHUB_REDIS_MIN_REPLICAS, else 0)",
        ),
    )
    # Where the collector announces each stored batch: Redis Pub/Sub and/or the per-user RabbitMQ queues.
    notify: tuple[str, ...] = setting(("redis",), Source("SENSORHUB_NOTIFY", parse=_notify))
    notify_via: Literal["redis", "rabbitmq"] = setting(
        "redis",
        Source(
            "SENSORHUB_NOTIFY_VIA",
            "one of redis, rabbitmq",
            help="what wakes this dashboard's live feed: redis (Pub/Sub) or rabbitmq (the user's queue); "
            "default: $SENSORHUB_NOTIFY_VIA, else redis",
        ),
    )
    stream_backlog: Annotated[int, msgspec.Meta(gt=0)] = setting(
        1000,
        Source(
            "SENSORHUB_STREAM_BACKLOG",
            "a positive whole number of batches",
            int,
            help="batches of readings a live SSE or WebSocket client may fall behind before it is ended "
            "(it resumes by id; default: $SENSORHUB_STREAM_BACKLOG, else 1000)",
        ),
    )
    offline_after: Annotated[float, msgspec.Meta(ge=0, le=86400 * 30)] = setting(
        0.0,
        Source(
            "SENSORHUB_OFFLINE_AFTER",
            "a number of seconds, 0 or more",
            float,
            help="seconds of silence after which a station is offline; 0: ten times its usual interval "
            "(default: $SENSORHUB_OFFLINE_AFTER, else 0)",
        ),
    )
    # Stations over MQTT (RabbitMQ's MQTT plugin, on the host of SENSORHUB_AMQP_URL).
    mqtt_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = setting(
        1883, Source("SENSORHUB_MQTT_PORT", "a port from 1 to 65535", int)
    )
    # Where `sensorhub station` manages station accounts, as the account of SENSORHUB_AMQP_URL.
    rabbitmq_api_url: str = setting(
        "http://127.0.0.1:15672/",
        Source("SENSORHUB_RABBITMQ_API_URL", "a http or https URL with a host", _url("http", "https")),
    )
    # Empty: `sensorhub dashboard` generates one; `sensorhub run` derives each user's from it.
    dashboard_token: str = setting(
        "",
        Source(
            "SENSORHUB_DASHBOARD_TOKEN",
            flag="--token",
            help="the secret for this dashboard (default: $SENSORHUB_DASHBOARD_TOKEN, else generated)",
            secret=True,
        ),
    )

    # The key of the keyed hash `sensorhub web` stores for each access token (`sensorhub token add`).
    token_secret: str = setting(
        "",
        Source(
            "SENSORHUB_TOKEN_SECRET",
            flag="--web-secret",  # not --token-secret: argparse would take `--token` for its abbreviation
            help="the key of the hashes stored for `sensorhub web` tokens (default: $SENSORHUB_TOKEN_SECRET)",
            secret=True,
        ),
    )

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The RabbitMQ nodes to try, in order (SENSORHUB_AMQP_URL may list several, comma-separated)."""
        return tuple(self.amqp_url.split(","))

    @property
    def amqp_node(self) -> SplitResult:
        """The first node's URL, taken apart: its host (where the MQTT plugin and the management API
        are), its account and its vhost. Never `urlsplit(amqp_url)`, which a list would confuse."""
        return urlsplit(self.amqp_urls[0])


SOURCES: dict[str, Source] = {f.name: f.metadata["source"] for f in fields(Settings)}
_TYPES = get_type_hints(Settings, include_extras=True)


def flag(name: str) -> str:
    """The CLI flag of a setting: `--token`, or `--amqp-url` for `amqp_url`."""
    return SOURCES[name].flag or "--" + name.replace("_", "-")


def help_text(name: str) -> str:
    source = SOURCES[name]
    return source.help or f"default: ${source.env}"


def _parse(name: str, shown_as: str, raw: str) -> Any:
    source = SOURCES[name]
    try:
        return msgspec.convert(source.parse(raw), _TYPES[name], strict=False)
    except Invalid as exc:
        raise ConfigError(f"{shown_as}{exc}") from None
    except (ValueError, msgspec.ValidationError):
        raise ConfigError(f"{shown_as} must be {source.must_be}, got {raw!r}") from None


def load(environ: Mapping[str, str], overrides: Mapping[str, str | None] | None = None) -> Settings:
    """Build settings from the environment; a CLI flag (an override that is not None) wins.

    Raises ConfigError naming the variable or flag that is wrong.
    """
    values: dict[str, Any] = {}
    overrides = overrides or {}
    for name, source in SOURCES.items():
        given = overrides.get(name)
        if given is not None:
            values[name] = _parse(name, flag(name), given)
        elif source.env in environ:
            values[name] = _parse(name, source.env, environ[source.env])
    return Settings(**values)


def describe(settings: Settings) -> dict[str, Any]:
    """The settings with passwords and secrets hidden, for logs and `doctor`."""
    shown = asdict(settings)
    for name, value in shown.items():
        if name.endswith("_url"):
            shown[name] = ",".join(_hide_password(url) for url in value.split(","))
        elif SOURCES[name].secret and value:
            shown[name] = "***"
    return shown


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, for the processes a command starts."""
    return {source.env: _text(getattr(settings, name)) for name, source in SOURCES.items()}
