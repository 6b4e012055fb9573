"""A user's alert rules: the schema the API validates, and where they live in Redis.

A rule is stored as the JSON the API returns, one hash field per rule under the user's keys; the
user is added to the set of users `sensorhub alerts` follows.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

import msgspec

from sensorhub.dashboard.userlog import UserLog
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis, text

MAX_RULES = 100
RuleId = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9._-]{1,40}\Z")]
Kind = Literal["above", "below", "offline"]
Quantity = Literal["temperature", "pressure", "humidity"]


class BadRule(ValueError):
    """Why a rule is refused: the message is the API's 400 `error`."""


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=False):
    """`above`/`below`: fires when `quantity` stays past `value` for `for_seconds` (of reading time),
    resolves once back past `clear`. `offline`: fires when the station goes offline (only `station`
    counts; `quantity`, `value`, `clear` and `for_seconds` are not used)."""

    station: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    kind: Kind
    id: RuleId = ""
    quantity: Quantity | None = None
    value: float | None = None
    clear: float | None = None
    for_seconds: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 0

    def applies_to(self, station: str) -> bool:
        return self.station in ("*", station)

    def past_value(self, x: float) -> bool:
        assert self.value is not None
        return x > self.value if self.kind == "above" else x < self.value

    def past_clear(self, x: float) -> bool:
        """Back on the good side of `clear` (strictly), which resolves a firing rule."""
        assert self.clear is not None
        return x < self.clear if self.kind == "above" else x > self.clear


_decode_rule = msgspec.json.Decoder(Rule).decode
encode = msgspec.json.Encoder().encode  # a rule, or the initial state


def parse(body: bytes) -> Rule:
    """A rule from a request body, completed (`id`, `clear`) and checked; BadRule says what is wrong."""
    try:
        rule = _decode_rule(body)
    except msgspec.ValidationError as exc:
        raise BadRule(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRule(f"the body must be a JSON object: {exc}") from None
    if not rule.id:
        rule = msgspec.structs.replace(rule, id=f"r_{secrets.token_hex(6)}")
    if rule.kind == "offline":
        return msgspec.structs.replace(rule, quantity=None, value=None, clear=None, for_seconds=0)
    if rule.quantity is None:
        raise BadRule(f"a rule of kind {rule.kind!r} needs `quantity`: temperature, pressure or humidity")
    value = rule.value
    if value is None:
        raise BadRule(f"a rule of kind {rule.kind!r} needs a numeric `value`")
    clear = value if rule.clear is None else rule.clear
    if rule.kind == "above" and clear > value:
        raise BadRule(f"`clear` ({clear:g}) must not be above `value` ({value:g}) for an `above` rule")
    if rule.kind == "below" and clear < value:
        raise BadRule(f"`clear` ({clear:g}) must not be below `value` ({value:g}) for a `below` rule")
    return msgspec.structs.replace(rule, clear=clear)


def to_builtins(rule: Rule) -> dict[str, object]:
    return msgspec.to_builtins(rule)  # type: ignore[no-any-return]


def decode_stored(raw: bytes | str) -> Rule | None:
    try:
        return _decode_rule(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


class Rules:
    """One user's rules in Redis."""

    def __init__(self, redis: AnyRedis, keys: Keys, user: str) -> None:
        self._redis = redis
        self._keys = keys
        self._user = user
        self._key = keys.rules(user)

    async def all(self) -> list[Rule]:
        raw = await self._redis.hgetall(self._key)
        found = [decode_stored(v) for v in raw.values()]
        return sorted((r for r in found if r is not None), key=lambda r: r.id)

    async def put(self, rule: Rule) -> bool:
        """Add or replace a rule (the evaluator restarts a changed rule); False once the user has MAX_RULES."""
        exists = await self._redis.hexists(self._key, rule.id)
        if not exists and int(await self._redis.hlen(self._key)) >= MAX_RULES:
            return False
        await self._redis.hset(self._key, rule.id, encode(rule))
        # A user's first rule applies to readings logged from now on: the evaluator starts here.
        now = await UserLog(self._redis, self._keys, self._user).last_id()
        await self._redis.set(self._keys.alert_state(self._user), encode({"cursor": now}), nx=True)
        await self._redis.sadd(self._keys.alert_users(), self._user)
        return True

    async def delete(self, rule_id: str) -> bool:
        return int(await self._redis.hdel(self._key, rule_id)) > 0


async def users(redis: AnyRedis, keys: Keys) -> list[str]:
    """The users `sensorhub alerts` follows (those that ever had a rule; one with none costs a read)."""
    return sorted(text(u) for u in await redis.smembers(keys.alert_users()))
