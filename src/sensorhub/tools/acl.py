"""`sensorhub acl`: Redis users with least privilege, so isolation holds even if dashboard code is wrong.

A dashboard user can read only its own user's keys and subscribe only to its own channel, with no
command that lists keys (`KEYS`, `SCAN`, `RANDOMKEY` would leak other users' key names).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from sensorhub.keys import Keys
from sensorhub.settings import Settings

# CLIENT SETINFO, which redis-py also sends, is unknown to Redis 7.0 ACLs; redis-py ignores its refusal.
_CONNECTION = ["+ping", "+hello", "+client|setname", "+client|id"]
_CLUSTER = ["+cluster|slots", "+cluster|shards", "+cluster|nodes", "+readonly", "+command|info", "+command|docs"]
# Inside the save script too: Redis checks ACLs for every command a script calls.
COLLECTOR_COMMANDS = [
    "+evalsha",
    "+eval",
    "+script|load",
    "+script|exists",
    "+set",
    "+xadd",
    "+xrevrange",
    "+publish",
    "+spublish",
    "+pubsub|numsub",
    "+pubsub|shardnumsub",
    "+pubsub|numpat",
    "+time",
]
DASHBOARD_COMMANDS = [
    "+get", "+mget", "+xrange", "+xrevrange",
    "+subscribe", "+unsubscribe", "+ssubscribe", "+sunsubscribe",
    # alert rules and acknowledgements: written only to the keys listed in `_dashboard_keys`
    "+hgetall", "+hexists", "+hlen", "+hkeys", "+hset", "+hdel", "+set", "+sadd", "+expire",
]  # fmt: skip
# `sensorhub alerts`: reads every user's rules and log, writes each one's state and alert log.
ALERTS_COMMANDS = [
    "+get", "+mget", "+xrange", "+xrevrange", "+hgetall", "+smembers", "+del",
    "+evalsha", "+eval", "+script|load", "+script|exists", "+set", "+xadd", "+xtrim", "+expire", "+time",
]  # fmt: skip


@dataclass(frozen=True)
class RedisUser:
    role: str
    name: str
    password: str
    rule: str

    def setuser(self) -> list[str]:
        return ["ACL", "SETUSER", self.name, *self.rule.split()]

    def url(self, redis_url: str) -> str:
        parts = urlsplit(redis_url)
        host = parts.hostname or "127.0.0.1"
        netloc = f"{quote(self.name)}:{quote(self.password)}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _name(settings: Settings, role: str) -> str:
    return f"{settings.namespace}.sensorhub-{role}" if settings.namespace else f"sensorhub-{role}"


def plan(settings: Settings, users: tuple[str, ...]) -> list[RedisUser]:
    keys = Keys(settings.namespace)
    connection = _CONNECTION + (_CLUSTER if settings.redis_cluster else [])
    everyone = keys.user_pattern("*")
    accounts = [
        ("collector", f"~{everyone}", everyone, COLLECTOR_COMMANDS),
        ("alerts", f"~{everyone} ~{keys.alert_users()}", everyone, ALERTS_COMMANDS),
    ]
    accounts += [
        (f"dashboard-{user}", _dashboard_keys(keys, user), keys.user_pattern(user), DASHBOARD_COMMANDS)
        for user in users
    ]
    planned = []
    for role, key_rights, channels, commands in accounts:
        password = secrets.token_urlsafe(24)
        rule = " ".join(["reset", "on", f">{password}", key_rights, f"&{channels}", "-@all", *commands, *connection])
        planned.append(RedisUser(role, _name(settings, role), password, rule))
    return planned


def _dashboard_keys(keys: Keys, user: str) -> str:
    """Read the user's readings, log and alert log; read and write its rules, acknowledgements and the
    evaluator's starting point, and the index of users with rules. Nothing else of the user's keys:
    not its webhooks' secrets (Redis 7 read-only key selectors, `%R~`)."""
    readable = [keys.data_pattern(user), keys.log(user), keys.alerts(user), keys.alert_newest(user)]
    writable = [keys.rules(user), keys.alert_state(user), keys.alert_acks(user), keys.alert_users()]
    return " ".join([*(f"%R~{key}" for key in readable), *(f"~{key}" for key in writable)])


def render(settings: Settings, planned: list[RedisUser]) -> str:
    lines = ["# Redis ACL users for sensorhub; give each process the URL above its line."]
    for user in planned:
        lines.append(f"# {user.role}: SENSORHUB_REDIS_URL={user.url(settings.redis_url)}")
        lines.append(f"ACL SETUSER {user.name} {user.rule}")
    return "\n".join(lines)
