"""`sensorhub web`: every user's dashboard from one service, at `/u/<user>/`.

The user-level endpoints are the per-user dashboard's own (`app.USER_ROUTES`), mounted under
`/u/{user}`; `UserGuard` checks the request's token against that user's tokens in Redis and fills
`request.state` for that user (user, auth, redis, userlog, feed) from the `Hub`, which holds a
user's feed only while someone watches. A revoked token's open streams are ended by `Revocations`
within REVOCATION_POLL_SECONDS. `/healthz`, `/metrics` and `/static` are at the root, public.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypedDict

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from sensorhub import redis_client
from sensorhub.dashboard import tokens
from sensorhub.dashboard.app import EXCEPTION_HANDLERS, STATIC, USER_ROUTES
from sensorhub.dashboard.auth import TokenAuth
from sensorhub.dashboard.feed import Notifications, PubSubFactory
from sensorhub.dashboard.hub import Hub
from sensorhub.dashboard.security import (
    SecurityHeaders,
    cross_origin_refusal,
    error_response,
    refuse_websocket,
    same_origin,
)
from sensorhub.dashboard.subscriptions import SharedPubSub
from sensorhub.dashboard.wakeups import QueueWakeups
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis
from sensorhub.settings import USER_PATTERN, Settings
from sensorhub.status import metrics_route

log = logging.getLogger("sensorhub.web")

REVOCATION_POLL_SECONDS = 0.25
# On a cluster each watched user's sharded subscription holds a connection of its own: not from the
# 32 of the command pool (a plain Redis shares one connection for all of them: SharedPubSub).
SUBSCRIPTIONS_MAX = 10_000  # Redis's default maxclients
STREAM_PATHS = ("/events", "/ws")
TOKEN_NEEDED = "a valid token for this user is required (cookie, Authorization: Bearer, or ?token=)"


class WebState(TypedDict):
    redis: AnyRedis
    hub: Hub
    revocations: Revocations
    settings: Settings


class WebSession(TokenAuth):
    """The token a request came with, for the page: `?token=` becomes a cookie of this user's path only."""

    def __init__(self, user: str, token: str) -> None:
        super().__init__(user, token)
        self.cookie_name = self.cookie_of(user)
        self.cookie_path = f"/u/{user}/"
        self._cookie_value = token

    @staticmethod
    def cookie_of(user: str) -> str:
        """`user`'s cookie: one name per user, and the guard reads only the URL's user's (set here, read there)."""
        return f"sensorhub_web_{user}"


class Revocations:
    """Ends the streams of revoked tokens: polls the revoke counter, then checks only the tokens in use."""

    def __init__(self, redis: AnyRedis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._open: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._seen: int | None = None

    @contextlib.contextmanager
    def watch(self, user: str, token_id: str) -> Iterator[asyncio.Event]:
        """An event set once `token_id` of `user` is revoked, while the block runs."""
        revoked = asyncio.Event()
        self._open.setdefault((user, token_id), set()).add(revoked)
        try:
            yield revoked
        finally:
            watchers = self._open[(user, token_id)]
            watchers.discard(revoked)
            if not watchers:
                del self._open[(user, token_id)]

    async def run(self) -> None:
        while True:
            try:
                count = await tokens.revocations(self._redis, self._keys)
                if count != self._seen:
                    await self._check()
                    self._seen = count
            except Exception as exc:  # never die: a dead watcher would leave revoked streams open
                log.warning("cannot check for revoked tokens now (%s); retrying", exc)
            await asyncio.sleep(REVOCATION_POLL_SECONDS)

    async def _check(self) -> None:
        by_user: dict[str, set[str]] = {}
        for user, token_id in list(self._open):
            by_user.setdefault(user, set()).add(token_id)
        for user, ids in by_user.items():
            valid = await tokens.still_valid(self._redis, self._keys, user, ids)
            for token_id in ids - valid:
                for revoked in self._open.get((user, token_id), ()):
                    revoked.set()


@contextlib.asynccontextmanager
async def lifespan(settings: Settings, app: Starlette) -> AsyncIterator[WebState]:
    redis = redis_client.connect(settings, "sensorhub-web")
    subscriber = redis_client.connect(settings, "sensorhub-web-subscriptions", max_connections=SUBSCRIPTIONS_MAX)
    shared = SharedPubSub(subscriber) if isinstance(subscriber, Redis) else None
    hub = Hub(settings, redis, functools.partial(_wakeups, settings, subscriber, shared))
    app.state.end_streams = hub.end_streams  # called on SIGTERM, before the server waits for open responses
    revocations = Revocations(redis, Keys(settings.namespace))
    watcher = asyncio.create_task(revocations.run())
    try:
        yield {"redis": redis, "hub": hub, "revocations": revocations, "settings": settings}
    finally:
        watcher.cancel()
        await asyncio.wait({watcher})
        await hub.aclose()
        if shared is not None:
            await shared.aclose()
        await subscriber.aclose()
        await redis.aclose()


def _wakeups(settings: Settings, subscriber: AnyRedis, shared: SharedPubSub | None, user: str) -> Notifications:
    """What wakes `user`'s feed: their RabbitMQ queue, the shared Pub/Sub connection, or (cluster) a sharded one."""
    channel = Keys(settings.namespace).notify(user)
    if settings.notify_via == "rabbitmq":
        return QueueWakeups(settings, user)
    if shared is not None:
        return functools.partial(shared.factory, channel)
    return PubSubFactory(subscriber, channel)


async def healthz(request: Request) -> Response:
    hub: Hub = request.state.hub
    redis_ok = await redis_client.answers(request.state.redis)
    body = {
        "status": "ok" if redis_ok else "unavailable",
        "redis": redis_ok,
        "watched_users": hub.watched,
        "stream_clients": hub.stream_clients,
    }
    return JSONResponse(body, status_code=200 if redis_ok else 503)


class UserGuard:
    """In front of one user's endpoints: that user's token, then their state, for as long as the request runs."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._app = app
        self._keys = Keys(settings.namespace)
        self._secret = settings.token_secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        user = str(scope["path_params"]["user"])
        if not USER_PATTERN.match(user):
            await self._refuse(scope, receive, send, 404, f"no such user: {user!r}")
            return
        state = scope["state"]
        with contextlib.ExitStack() as stack:
            token = await self._verified(stack, state, user, connection)
            if token is None:
                await self._refuse(scope, receive, send, 401, TOKEN_NEEDED, user)
                return
            token_value, revoked = token
            if scope["type"] == "websocket" and not same_origin(connection):
                await self._refuse(scope, receive, send, 403, cross_origin_refusal(connection))
                return
            hub: Hub = state["hub"]
            stream = _route_path(scope) in STREAM_PATHS
            async with hub.watching(user, ready=stream) as (userlog, feed):
                scope["state"] = {
                    **state,
                    "user": user,
                    "auth": WebSession(user, token_value),
                    "userlog": userlog,
                    "feed": feed,
                }
                sent = _Tracked(send)
                if await _unless_revoked(asyncio.ensure_future(self._app(scope, receive, sent)), revoked):
                    await _end_revoked(scope, receive, sent)

    async def _verified(
        self, stack: contextlib.ExitStack, state: dict[str, Any], user: str, connection: HTTPConnection
    ) -> tuple[str, asyncio.Event] | None:
        """The first of the request's tokens that is `user`'s, watched for revocation from before it was checked."""
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        candidates = [
            credentials.strip() if scheme.lower() == "bearer" else None,
            connection.cookies.get(WebSession.cookie_of(user)),
            connection.query_params.get("token"),
        ]
        revocations: Revocations = state["revocations"]
        for candidate in candidates:
            match = tokens.TOKEN.match(candidate or "")
            if candidate is None or match is None:
                continue
            revoked = stack.enter_context(revocations.watch(user, match[1]))
            if await tokens.verify(state["redis"], self._keys, self._secret, user, candidate) is not None:
                return candidate, revoked
        return None

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, status: int, message: str, user: str | None = None
    ) -> None:
        if scope["type"] == "websocket":
            await refuse_websocket(WebSocket(scope, receive, send), status, message)
            return
        response: Response
        if user is not None and _route_path(scope) == "/":
            response = PlainTextResponse(
                f"401: this is {user}'s dashboard. Open it with ?token=... (an operator creates one with "
                f"`sensorhub token add --user {user}`).",
                status_code=401,
            )
        else:
            response = error_response(status, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path under the user's mount (`/events` of `/u/user1/events`)."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


class _Tracked:
    """A `send` that remembers how far the response got, so a revoke can end it properly."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.accept"):
            self.started = True
        elif (kind == "http.response.body" and not message.get("more_body", False)) or kind == "websocket.close":
            self.finished = True
        await self._send(message)


async def _unless_revoked(task: asyncio.Future[None], revoked: asyncio.Event) -> bool:
    """Await the endpoint's `task`; True if the token was revoked first (the task is then cancelled)."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(revoked.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return True
    task.result()  # the endpoint's own failure, if it failed
    return False


async def _end_revoked(scope: Scope, receive: Receive, sent: _Tracked) -> None:
    """Close what the cancelled endpoint left open: the SSE body ends, a socket closes with 1008 (don't retry)."""
    with contextlib.suppress(Exception):  # the client may be gone already
        if sent.finished:
            return
        if scope["type"] == "websocket":
            await sent({"type": "websocket.close", "code": 1008, "reason": "token revoked"})
        elif sent.started:
            await sent({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await error_response(401, "token revoked")(scope, receive, sent)


def create_web_app(settings: Settings) -> Starlette:
    users = Mount("/u/{user}", app=UserGuard(Router(routes=USER_ROUTES), settings))
    return Starlette(
        routes=[Route("/healthz", healthz), metrics_route(), STATIC, users],
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=functools.partial(lifespan, settings),
    )
