"""The dashboard's HTTP interface: the page, the readings API, the SSE and WebSocket streams, health and metrics.

A thin layer: the lifespan owns Redis and the feed and yields them as state; endpoints are plain
functions that read `request.state`, raise HTTPException for a bad request, and let a RedisError
become 503 in one handler. What a client is streamed (the product's promise) is `Feed.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from importlib.resources import files
from typing import Any, TypedDict

import msgspec
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from sensorhub import redis_client
from sensorhub.alerting.alertlog import AlertFollower
from sensorhub.dashboard import alerts_api, websocket
from sensorhub.dashboard.auth import TokenAuth
from sensorhub.dashboard.feed import Feed, Notifications, PubSubFactory
from sensorhub.dashboard.security import (
    SecurityHeaders,
    cross_origin_refusal,
    error_response,
    refuse_websocket,
    same_origin,
)
from sensorhub.dashboard.userlog import START, UserLog, parse_log_id
from sensorhub.dashboard.wakeups import QueueWakeups
from sensorhub.keys import Keys
from sensorhub.redis_client import AnyRedis
from sensorhub.settings import Settings
from sensorhub.status import metrics_route

log = logging.getLogger("sensorhub.dashboard")

PAGE_READINGS = 500
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
PUBLIC_PATHS = ("/healthz", "/static/")
TOKEN_NEEDED = "a valid token is required (cookie, Authorization: Bearer, or ?token=)"

_to_builtins = msgspec.to_builtins
templates = Jinja2Templates(directory=str(files("sensorhub.dashboard") / "templates"))


class State(TypedDict):
    """What the lifespan gives every request, as `request.state.<name>`."""

    user: str
    auth: TokenAuth
    redis: AnyRedis
    userlog: UserLog
    feed: Feed
    settings: Settings


@contextlib.asynccontextmanager
async def lifespan(settings: Settings, auth: TokenAuth, app: Starlette) -> AsyncIterator[State]:
    keys = Keys(settings.namespace)
    redis = redis_client.connect(settings, f"sensorhub-dashboard:{auth.user}")
    userlog = UserLog(redis, keys, auth.user)
    wakeups: Notifications = (
        QueueWakeups(settings, auth.user)
        if settings.notify_via == "rabbitmq"
        else PubSubFactory(redis, keys.notify(auth.user))
    )
    feed = Feed(userlog, wakeups, backlog=settings.stream_backlog)
    app.state.end_streams = feed.stop  # called on SIGTERM, before the server waits for open responses
    alerts = AlertFollower(redis, keys)
    alerts.follow(auth.user, feed)
    try:
        async with feed.running():
            following = asyncio.create_task(alerts.run())
            try:
                yield {
                    "user": auth.user,
                    "auth": auth,
                    "redis": redis,
                    "userlog": userlog,
                    "feed": feed,
                    "settings": settings,
                }
            finally:
                alerts.stop()
                following.cancel()
                await asyncio.wait({following})
    finally:
        await redis.aclose()


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise HTTPException(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def _log_id(raw: str | None, name: str) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        ms, seq = parse_log_id(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a log id like 1795823506595-0, got {raw!r}") from None
    return f"{ms}-{seq}"


async def page(request: Request) -> Response:
    auth: TokenAuth = request.state.auth
    if "token" in request.query_params and auth.token_matches(request.query_params["token"]):
        # Trade the token in the address bar for a cookie, and drop it from the URL and history.
        response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
        response.set_cookie(
            auth.cookie_name,
            auth.cookie_value,
            path=auth.cookie_path,
            httponly=True,
            samesite="strict",
            max_age=30 * 86400,
        )
        return response
    initial = {"user": auth.user, **await _initial_readings(request.state.userlog, request.state.feed)}
    context = {**initial, "initial": initial, "static_url": "/static"}
    return templates.TemplateResponse(request, "index.html", context)


async def _initial_readings(userlog: UserLog, feed: Feed) -> dict[str, Any]:
    """The newest readings and the cursor to stream from; without Redis, the page still renders."""
    try:
        latest = await userlog.newest(PAGE_READINGS)
    except RedisError as exc:
        log.warning("page rendered without readings: redis unavailable (%s)", exc)
        # Resume from the feed's cursor, not the start of the log: the page would replay the day.
        return {"readings": [], "last_id": feed.cursor or START}
    last_id = latest.entries[-1][1].log_id if latest.entries else START
    return {"readings": [_to_builtins(r) for _, r in latest.entries], "last_id": last_id}


async def api_readings(request: Request) -> Response:
    limit = _limit(request)
    after = _log_id(request.query_params.get("after"), "after")
    userlog: UserLog = request.state.userlog
    result = await (userlog.after(after, limit) if after is not None else userlog.newest(limit))
    last_id = result.last_id if after is not None or not result.entries else result.entries[-1][1].log_id
    return JSONResponse(
        {"readings": [_to_builtins(r) for _, r in result.entries], "last_id": last_id},
        headers={"Cache-Control": "no-store"},
    )


async def events(request: Request) -> Response:
    if not same_origin(request):
        raise HTTPException(403, cross_origin_refusal(request))
    resume = _log_id(request.headers.get("last-event-id"), "Last-Event-ID") or _log_id(
        request.query_params.get("last_id"), "last_id"
    )
    feed: Feed = request.state.feed
    # A plain streaming response: the feed encodes each event once, and sends the keep-alives and
    # the end at shut-down itself, so a chunk only needs writing (sse-starlette's cancel scope and
    # task plumbing per chunk cost 100 clients a third of the dashboard's CPU).
    return StreamingResponse(
        feed.stream(resume),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def ws(connection: WebSocket) -> None:
    """The stream of /events over a WebSocket (the Guard has checked the token and the Origin)."""
    try:
        resume = _log_id(connection.query_params.get("last_id"), "last_id")
    except HTTPException as exc:
        await refuse_websocket(connection, exc.status_code, exc.detail)
        return
    await websocket.serve(connection, connection.state.feed, resume)


async def healthz(request: Request) -> Response:
    feed: Feed = request.state.feed
    redis_ok = await redis_client.answers(request.state.redis)
    healthy = redis_ok and feed.subscribed
    body = {
        "status": "ok" if healthy else "unavailable",
        "user": request.state.user,
        "redis": redis_ok,
        "subscribed": feed.subscribed,
        "sse_clients": feed.client_count,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, exc.headers)


async def redis_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(503, f"redis unavailable: {exc}")


class Guard:
    """Everything but health and assets needs the token (`SecurityHeaders`, outside it, adds the headers).

    Pure ASGI (not BaseHTTPMiddleware), so SSE chunks pass straight through.
    """

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self._app = app
        self._auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        if connection.url.path.startswith(PUBLIC_PATHS) or self._auth.allows(connection):
            await self._app(scope, receive, send)
            return
        response: Response
        if connection.url.path == "/":
            response = PlainTextResponse(
                f"401: this is {self._auth.user}'s dashboard. Open the URL with ?token=... that "
                "`sensorhub dashboard` printed, or set SENSORHUB_DASHBOARD_TOKEN.",
                status_code=401,
            )
        else:
            response = error_response(401, TOKEN_NEEDED)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A handshake is refused before it is accepted: without the token, or from another site's page."""
        connection = WebSocket(scope, receive, send)
        if not self._auth.allows(connection):
            await refuse_websocket(connection, 401, TOKEN_NEEDED)
        elif not same_origin(connection):
            await refuse_websocket(connection, 403, cross_origin_refusal(connection))
        else:
            await self._app(scope, receive, send)


# One user's endpoints, relative to where that user's dashboard lives: `/` of `sensorhub dashboard`,
# `/u/<user>/` of `sensorhub web`. They read only `request.state` (user, auth, redis, userlog, feed),
# which each service fills for the user of the URL. Add a user-level endpoint here, and both serve it.
USER_ROUTES: list[BaseRoute] = [
    Route("/", page),
    Route("/api/readings", api_readings),
    Route("/api/stations", alerts_api.stations),
    Route("/api/rules", alerts_api.rules_api, methods=["GET", "POST", "DELETE"]),
    Route("/api/alerts", alerts_api.alerts),
    Route("/api/alerts/ack", alerts_api.acknowledge, methods=["POST"]),
    Route("/events", events),
    WebSocketRoute("/ws", ws),
]
STATIC = Mount("/static", StaticFiles(directory=str(files("sensorhub.dashboard") / "static")), name="static")
EXCEPTION_HANDLERS: Mapping[Any, Any] = {HTTPException: http_error, RedisError: redis_unavailable}

ROUTES = [
    *USER_ROUTES,
    Route("/healthz", healthz),
    metrics_route(),
    STATIC,
]


def create_app(settings: Settings, user: str, token: str) -> Starlette:
    auth = TokenAuth(user, token)
    return Starlette(
        routes=ROUTES,
        middleware=[Middleware(SecurityHeaders), Middleware(Guard, auth=auth)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=functools.partial(lifespan, settings, auth),
    )
