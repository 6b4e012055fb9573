"""Access tokens of `sensorhub web`: several per user, each added, listed and revoked without a restart.

A token is `<id>.<secret>`: the id says which record to check, so a request costs one HGET. Redis
holds only HMAC-SHA256(SENSORHUB_TOKEN_SECRET, token): someone who can read Redis cannot use what
is stored there, nor test guesses offline without the server secret. Records live under the
user's own keys (`{user}:tokens`), so user2's tokens are not even looked at on user1's URLs.
Every revoke bumps one counter, which `sensorhub web` polls to end that token's open streams.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis, text
from sensorhub.settings import ConfigError

TOKEN_ID = re.compile(r"\Atk_[0-9a-f]{16}\Z")
LABEL = re.compile(r"\A[A-Za-z0-9._@:-]{0,64}\Z")
TOKEN = re.compile(r"\A(tk_[0-9a-f]{16})\.[A-Za-z0-9_-]{43}\Z")


class BadToken(ConfigError):
    """Input `sensorhub token` refuses: its message is the one line shown."""


class Record(msgspec.Struct, frozen=True):
    hash: str
    label: str
    created: int  # ms since the epoch


@dataclass(frozen=True)
class Token:
    user: str
    id: str
    label: str
    created_ms: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Record).decode


def check_id(token_id: str) -> str:
    if not TOKEN_ID.match(token_id):
        raise BadToken(f"--id must be a token id like tk_0123456789abcdef, got {token_id!r}")
    return token_id


def check_label(label: str) -> str:
    if not LABEL.match(label):
        raise BadToken(f"--label must be at most 64 of letters, digits and ._@:-, got {label!r}")
    return label


def require_secret(secret: str) -> str:
    if not secret:
        raise ConfigError("SENSORHUB_TOKEN_SECRET must be set (any long random string; keep it the same everywhere)")
    return secret


def keyed_hash(secret: str, token: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def new() -> tuple[str, str]:
    """A fresh (token id, token), not stored yet."""
    token_id = f"tk_{secrets.token_hex(8)}"
    return token_id, f"{token_id}.{secrets.token_urlsafe(32)}"


async def add(redis: AnyRedis, keys: Keys, secret: str, user: str, label: str = "") -> tuple[Token, str]:
    """A new token for `user`: its record, and the token itself (shown once, stored only hashed)."""
    _, token = new()
    return await store(redis, keys, secret, user, token, label), token


async def store(redis: AnyRedis, keys: Keys, secret: str, user: str, token: str, label: str = "") -> Token:
    """Keep `token` (from `new`) as one of `user`'s: only its keyed hash."""
    match = TOKEN.match(token)
    assert match is not None, "a token made by new()"
    token_id = match[1]
    record = Record(keyed_hash(require_secret(secret), token), label, int(time.time() * 1000))
    await redis.hset(keys.tokens(user), token_id, _encode(record))
    await redis.sadd(keys.token_users(), user)
    return Token(user, token_id, label, record.created)


async def revoke(redis: AnyRedis, keys: Keys, user: str, token_id: str) -> bool:
    """Forget the token; False if `user` has no such token. Bumps the counter the web service watches."""
    removed = int(await redis.hdel(keys.tokens(user), token_id))
    if removed:
        await redis.incr(keys.tokens_revoked())
    return removed > 0


async def verify(redis: AnyRedis, keys: Keys, secret: str, user: str, candidate: str | None) -> str | None:
    """The id of `candidate` if it is one of `user`'s tokens now, else None."""
    match = TOKEN.match(candidate or "")
    if match is None:
        return None
    raw = await redis.hget(keys.tokens(user), match[1])
    if raw is None:
        return None
    try:
        record = _decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return match[1] if hmac.compare_digest(record.hash, keyed_hash(secret, candidate or "")) else None


async def still_valid(redis: AnyRedis, keys: Keys, user: str, token_ids: Collection[str]) -> set[str]:
    """Which of `token_ids` `user` still has."""
    ordered = sorted(token_ids)
    present = await redis.hmget(keys.tokens(user), ordered) if ordered else []
    return {token_id for token_id, raw in zip(ordered, present, strict=True) if raw is not None}


async def revocations(redis: AnyRedis, keys: Keys) -> int:
    return int(await redis.get(keys.tokens_revoked()) or 0)


async def listing(redis: AnyRedis, keys: Keys, only: str | None = None) -> list[Token]:
    """Every token (of `only`, if given), by user then creation time; never the token itself."""
    users = [only] if only else sorted(text(u) for u in await redis.smembers(keys.token_users()))
    found: list[Token] = []
    for user in users:
        raw = await redis.hgetall(keys.tokens(user))
        for token_id, value in raw.items():
            try:
                record = _decode(value)
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue
            found.append(Token(user, text(token_id), record.label, record.created))
    return sorted(found, key=lambda t: (t.user, t.created_ms, t.id))


def describe(token: Token) -> str:
    """One line of `sensorhub token list`: id first, then user, label, created."""
    created = datetime.fromtimestamp(token.created_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"{token.id}  {token.user}  {token.label or '-'}  {created}"
