"""The dashboard's HTTP interface: the page, the readings API, the SSE stream, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import msgspec
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sensorhub import metrics, redis_client
from sensorhub.dashboard.auth import TokenAuth
from sensorhub.dashboard.feed import Feed, PubSubFactory, sse_event
from sensorhub.dashboard.userlog import START, UserLog, parse_log_id
from sensorhub.keys import Keys
from sensorhub.settings import Settings
from sensorhub.status import metrics_endpoint

log = logging.getLogger("sensorhub.dashboard")

PAGE_READINGS = 500
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
REPLAY_PAGE = 1000
SSE_RETRY_MS = 1000
HEARTBEAT_SECONDS = 15
PUBLIC_PATHS = ("/healthz", "/static/")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

_to_builtins = msgspec.to_builtins


class BadRequest(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def _log_id(raw: str | None, name: str) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        ms, seq = parse_log_id(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a log id like 1795823506595-0, got {raw!r}") from None
    return f"{ms}-{seq}"


def _embed_json(value: Any) -> str:
    """JSON that is safe inside a <script type="application/json"> element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class Guard:
    """Every response gets the security headers; everything but health and assets needs the token.

    Pure ASGI (not BaseHTTPMiddleware), so SSE chunks pass straight through.
    """

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self._app = app
        self._auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        connection = HTTPConnection(scope)
        if connection.url.path.startswith(PUBLIC_PATHS) or self._auth.allows(connection):
            await self._app(scope, receive, send_with_headers)
            return
        response: Response
        if connection.url.path == "/":
            response = PlainTextResponse(
                f"401: this is {self._auth.user}'s dashboard. Open the URL with ?token=... that "
                "`sensorhub dashboard` printed, or set SENSORHUB_DASHBOARD_TOKEN.",
                status_code=401,
            )
        else:
            response = _error(401, "a valid token is required (cookie, Authorization: Bearer, or ?token=)")
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send_with_headers)


def create_app(settings: Settings, user: str, token: str) -> Starlette:
    keys = Keys(settings.namespace)
    redis = redis_client.connect(settings, f"sensorhub-dashboard:{user}")
    userlog = UserLog(redis, keys, user)
    feed = Feed(userlog, PubSubFactory(redis, keys.notify(user)))
    auth = TokenAuth(user, token)
    templates = Jinja2Templates(directory=str(files("sensorhub.dashboard") / "templates"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(feed.run())
        try:
            yield
        finally:
            # Python 3.11's wait_for (used inside redis-py) can swallow a cancellation that lands as
            # its inner call finishes (CPython gh-86296): cancel until the feed has really stopped.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
            await redis.aclose()

    async def page(request: Request) -> Response:
        if "token" in request.query_params and auth.token_matches(request.query_params["token"]):
            # Trade the token in the address bar for a cookie, and drop it from the URL and history.
            response: Response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
            response.set_cookie(
                auth.cookie_name, auth.cookie_value, httponly=True, samesite="strict", max_age=30 * 86400
            )
            return response
        try:
            latest = await userlog.newest(PAGE_READINGS)
        except RedisError as exc:
            log.warning("page rendered without readings: redis unavailable (%s)", exc)
            latest = None
        if latest is None:
            # Resume from the feed's cursor, not the start of the log: the page would replay the day.
            readings, last_id = [], feed.cursor or START
        else:
            readings = [_to_builtins(r) for _, r in latest.entries]
            last_id = latest.entries[-1][1].log_id if latest.entries else START
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "user": user,
                "readings": readings,
                "last_id": last_id,
                "initial_json": _embed_json({"user": user, "readings": readings, "last_id": last_id}),
                "static_url": "/static",
            },
        )

    async def api_readings(request: Request) -> Response:
        try:
            limit = _limit(request)
            after = _log_id(request.query_params.get("after"), "after")
        except BadRequest as exc:
            return _error(400, str(exc))
        try:
            result = await (userlog.after(after, limit) if after is not None else userlog.newest(limit))
        except RedisError as exc:
            return _error(503, f"redis unavailable: {exc}")
        last_id = result.last_id if after is not None or not result.entries else result.entries[-1][1].log_id
        return JSONResponse(
            {"readings": [_to_builtins(r) for _, r in result.entries], "last_id": last_id},
            headers={"Cache-Control": "no-store"},
        )

    async def events(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return _error(403, f"cross-origin stream request from {origin!r} refused")
        try:
            resume = _log_id(request.headers.get("last-event-id"), "Last-Event-ID") or _log_id(
                request.query_params.get("last_id"), "last_id"
            )
        except BadRequest as exc:
            return _error(400, str(exc))
        return EventSourceResponse(
            _stream(resume),
            ping=HEARTBEAT_SECONDS,
            headers={"Cache-Control": "no-store"},
        )

    async def _stream(resume: str | None) -> AsyncIterator[bytes]:
        metrics.SSE_CLIENTS.labels(user).inc()
        sent = metrics.SSE_EVENTS.labels(user)
        try:
            with feed.subscribe() as live:
                yield b"retry: %d\n\n" % SSE_RETRY_MS
                # Subscribe first, then replay: what arrives meanwhile is in `live`, and the cursor
                # drops what the replay already sent. A new client starts from the feed's cursor, so
                # a crowd connecting at once costs Redis nothing.
                cursor = resume or feed.cursor or await userlog.last_id()
                cursor_order = parse_log_id(cursor)
                while resume is not None:
                    page = await userlog.after(cursor, REPLAY_PAGE)
                    if page.entries:
                        yield b"".join(sse_event(r) for _, r in page.entries)
                        sent.inc(len(page.entries))
                    cursor, cursor_order = page.last_id, parse_log_id(page.last_id)
                    if page.scanned < REPLAY_PAGE:
                        break
                while True:
                    batch = await live.get()
                    if batch is None:
                        return  # too far behind: the browser reconnects with Last-Event-ID
                    fresh = [e for e in batch if e.order > cursor_order]
                    if fresh:
                        yield b"".join(e.sse for e in fresh)
                        sent.inc(len(fresh))
                        cursor_order = fresh[-1].order
        finally:
            metrics.SSE_CLIENTS.labels(user).dec()

    async def healthz(request: Request) -> Response:
        try:
            await redis.ping()
            redis_ok = True
        except RedisError:
            redis_ok = False
        healthy = redis_ok and feed.subscribed
        body = {
            "status": "ok" if healthy else "unavailable",
            "user": user,
            "redis": redis_ok,
            "subscribed": feed.subscribed,
            "sse_clients": feed.client_count,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    static = StaticFiles(directory=str(files("sensorhub.dashboard") / "static"))
    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/readings", api_readings),
            Route("/events", events),
            Route("/healthz", healthz),
            Route("/metrics", metrics_endpoint),
            Mount("/static", static, name="static"),
        ],
        middleware=[Middleware(Guard, auth=auth)],
        lifespan=lifespan,
    )
