"""The webhook registry: endpoints live in Redis under their user's keys, plus one index of users.

`sensorhub push` rescans the index every second, so adding or removing an endpoint needs no
restart. Each endpoint's hash also holds its delivery state: the cursor (a log id, moved only after
a 2xx), `offset` (how many log entries it has passed, to count entries trimmed before delivery),
counters, the failure state, and the message in flight (`msg_*`), so a retry, even by another
process after a crash, sends the same webhook-id with the same body.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from sensorhub.dashboard.userlog import START
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis, text
from sensorhub.settings import ConfigError

ENDPOINT_ID = re.compile(r"\Aep_[0-9a-f]{16}\Z")
SECRET_BYTES = 24  # the Standard Webhooks spec asks for 24 to 64 random bytes


class BadEndpoint(ConfigError):
    """Input `sensorhub webhook` refuses: its message is the one line shown."""


@dataclass(frozen=True)
class Message:
    """A request in flight: sent again as it is until a 2xx, then the cursor moves to `end`."""

    id: str
    end: str
    offset: int
    count: int
    expired: int
    body: bytes
    first_log_ms: int


@dataclass(frozen=True)
class Endpoint:
    user: str
    id: str
    url: str
    secret: str
    created_ms: int
    cursor: str
    offset: int
    delivered: int
    expired: int
    failing_since_ms: int | None
    last_error: str
    disabled: str
    message: Message | None
    alert_cursor: str = ""  # the last alert delivered ('': none; then every alert still in the log)


@dataclass(frozen=True)
class StreamInfo:
    """The user's log as XINFO STREAM sees it, in one atomic reply."""

    last_id: str
    entries_added: int
    length: int


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadEndpoint(f"--url must be an http or https URL with a host, got {url!r}")
    return url


def check_id(endpoint_id: str) -> str:
    if not ENDPOINT_ID.match(endpoint_id):
        raise BadEndpoint(f"--id must be an endpoint id like ep_0123456789abcdef, got {endpoint_id!r}")
    return endpoint_id


async def stream_info(redis: AnyRedis, log_key: str) -> StreamInfo:
    """The log's last id, entries ever added, and length; an absent log is empty."""
    try:
        info: dict[str, Any] = await redis.xinfo_stream(log_key)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return StreamInfo(START, 0, 0)
        raise
    return StreamInfo(text(info["last-generated-id"]), int(info["entries-added"]), int(info["length"]))


async def add(redis: AnyRedis, keys: Keys, user: str, url: str) -> Endpoint:
    """Register an endpoint that gets every reading logged from now on."""
    check_url(url)
    endpoint_id = f"ep_{secrets.token_hex(8)}"
    info = await stream_info(redis, keys.log(user))
    fields: dict[FieldT, EncodableT] = {
        "url": url,
        "secret": new_secret(),
        "created": int(time.time() * 1000),
        "cursor": info.last_id,
        "offset": info.entries_added,
        "delivered": 0,
        "expired": 0,
        "alert_cursor": await _last_alert(redis, keys.alerts(user)),
    }
    await redis.hset(keys.webhook(user, endpoint_id), mapping=fields)
    await redis.sadd(keys.webhooks(user), endpoint_id)
    await redis.sadd(keys.webhook_users(), user)
    endpoint = await load(redis, keys, user, endpoint_id)
    assert endpoint is not None
    return endpoint


async def _last_alert(redis: AnyRedis, alerts_key: str) -> str:
    """The newest alert's id: an endpoint gets the alerts logged after it was added."""
    newest = cast(list[tuple[bytes, Any]], await redis.xrevrange(alerts_key, count=1) or [])
    return text(newest[0][0]) if newest else START


async def remove(redis: AnyRedis, keys: Keys, user: str, endpoint_id: str) -> bool:
    """Forget an endpoint and its state; False if the user has no such endpoint."""
    removed = int(await redis.srem(keys.webhooks(user), endpoint_id))
    await redis.delete(keys.webhook(user, endpoint_id), keys.webhook_lease(user, endpoint_id))
    if not int(await redis.scard(keys.webhooks(user))):
        await redis.srem(keys.webhook_users(), user)
        if int(await redis.scard(keys.webhooks(user))):  # an add raced us
            await redis.sadd(keys.webhook_users(), user)
    return removed > 0


async def users(redis: AnyRedis, keys: Keys) -> list[str]:
    return sorted(text(u) for u in await redis.smembers(keys.webhook_users()))


async def endpoint_ids(redis: AnyRedis, keys: Keys, user: str) -> list[str]:
    return sorted(text(i) for i in await redis.smembers(keys.webhooks(user)))


async def all_ids(redis: AnyRedis, keys: Keys, only: str | None = None) -> list[tuple[str, str]]:
    """(user, endpoint id) of every endpoint (of `only`, if given), in order."""
    names = [only] if only else await users(redis, keys)
    return [(user, endpoint_id) for user in names for endpoint_id in await endpoint_ids(redis, keys, user)]


async def listing(redis: AnyRedis, keys: Keys, only: str | None = None) -> list[str]:
    """The lines of `sensorhub webhook list`."""
    lines, infos = [], {}
    for user, endpoint_id in await all_ids(redis, keys, only):
        if user not in infos:
            infos[user] = await stream_info(redis, keys.log(user))
        endpoint = await load(redis, keys, user, endpoint_id)
        if endpoint is not None:
            lines.append(describe(endpoint, infos[user]))
    return lines


async def load(redis: AnyRedis, keys: Keys, user: str, endpoint_id: str) -> Endpoint | None:
    """The endpoint with its state; None once it was removed."""
    raw = await redis.hgetall(keys.webhook(user, endpoint_id))
    fields = {text(k): _bytes(v) for k, v in raw.items()}
    if "url" not in fields:
        return None
    values = {k: v.decode() for k, v in fields.items() if k != "msg_body"}
    return Endpoint(
        user=user,
        id=endpoint_id,
        url=values["url"],
        secret=values["secret"],
        created_ms=int(values.get("created", 0)),
        cursor=values.get("cursor", START),
        offset=int(values.get("offset", 0)),
        delivered=int(values.get("delivered", 0)),
        expired=int(values.get("expired", 0)),
        failing_since_ms=int(values["failing_since"]) if "failing_since" in values else None,
        last_error=values.get("last_error", ""),
        disabled=values.get("disabled", ""),
        message=_message(values, fields.get("msg_body", b"")),
        alert_cursor=values.get("alert_cursor", ""),
    )


def _message(values: dict[str, str], body: bytes) -> Message | None:
    if "msg_id" not in values:
        return None
    return Message(
        id=values["msg_id"],
        end=values["msg_end"],
        offset=int(values["msg_offset"]),
        count=int(values["msg_count"]),
        expired=int(values["msg_expired"]),
        body=body,
        first_log_ms=int(values["msg_first_ms"]),
    )


def backlog(endpoint: Endpoint, info: StreamInfo) -> int:
    """Log entries the endpoint has not passed yet (those that turn out expired included)."""
    return max(0, info.entries_added - endpoint.offset)


def state(endpoint: Endpoint) -> str:
    if endpoint.disabled:
        return f"disabled ({endpoint.disabled})"
    if endpoint.failing_since_ms is not None:
        return f"failing since {_iso(endpoint.failing_since_ms)} ({endpoint.last_error})"
    return "active"


def describe(endpoint: Endpoint, info: StreamInfo) -> str:
    """One line of `sensorhub webhook list`."""
    return (
        f"{endpoint.user}  {endpoint.id}  {endpoint.url}  {state(endpoint)}  backlog {backlog(endpoint, info)}  "
        f"delivered {endpoint.delivered}  expired {endpoint.expired}"
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
