"""The HTTP pieces both dashboards' guards share (`app.Guard` of `sensorhub dashboard`, `web.UserGuard` of
`sensorhub web`): the security headers, the JSON error, refusing a WebSocket handshake, the same-origin check.

In one place so that the two services cannot drift apart in what they send or let through.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """The security headers on every HTTP response, refusals included (pure ASGI, not BaseHTTPMiddleware,
    so SSE chunks pass straight through)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self._app(scope, receive, send_with_headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Every error of the API has one shape, `{"error": message}`, so a client needs one parser."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def refuse_websocket(connection: WebSocket, status: int, message: str) -> None:
    """Before accepting: an HTTP error like any endpoint's where the server can send one, else close 1008."""
    if "websocket.http.response" in connection.scope.get("extensions", {}):
        await connection.send_denial_response(error_response(status, message))
    else:
        await connection.close(1008, message)


def same_origin(connection: HTTPConnection) -> bool:
    """No Origin (not a browser) or this dashboard's own; a WebSocket's ws(s):// is its page's http(s)://.

    Browsers send cookies on a cross-site WebSocket handshake and CORS does not apply to it, so this
    check is what stops another site's page from reading the user's stream.
    """
    origin = connection.headers.get("origin")
    scheme = {"ws": "http", "wss": "https"}.get(connection.url.scheme, connection.url.scheme)
    return origin is None or origin == f"{scheme}://{connection.url.netloc}"


def cross_origin_refusal(connection: HTTPConnection) -> str:
    """The message of a 403 for a stream request from another site's page."""
    return f"cross-origin stream request from {connection.headers['origin']!r} refused"
