"""`/ws`: one client's `Feed.events` as JSON text frames, for apps and pages that prefer a WebSocket to SSE.

Frames: `{"type": "reading", "id": <log id>, "reading": {...}}`, `{"type": "gap", "oldest_id", "last_id"}`
and, for the feed's keep-alive (after PING_SECONDS without an event), `{"type": "ping"}`: a page cannot
see protocol pings, so an app-level one lets it tell a quiet stream from a dead connection (uvicorn's
protocol pings still cut a peer that stopped answering). The close code says why a stream ended;
every code but 1008 means "reconnect with ?last_id=<the last id you got>".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.websockets import WebSocket, WebSocketDisconnect

from sensorhub import metrics
from sensorhub.dashboard.feed import HEARTBEAT_SECONDS, End, Feed, Gap, Heartbeat, Item, Notice

PING = '{"type":"ping"}'
PING_SECONDS = HEARTBEAT_SECONDS  # the feed sends the keep-alive, to all its clients at once
CLOSE_SECONDS = 30.0  # for a stalled client to take the close frame; uvicorn's keepalive pings cut a dead one sooner
CLOSE_CODES = {End.TOO_SLOW: 1013, End.STOPPED: 1001, End.REDIS_DOWN: 1011}


async def serve(websocket: WebSocket, feed: Feed, resume: str | None) -> None:
    """Accept, then stream until the client leaves or its stream ends (closed with that reason's code)."""
    await websocket.accept()
    dropped = asyncio.Event()
    events = feed.events(resume, dropped)
    tasks = {
        asyncio.create_task(_send(websocket, events)),
        asyncio.create_task(_until_left(websocket)),
        asyncio.create_task(_until_set(dropped, End.TOO_SLOW)),
    }
    clients = metrics.WS_CLIENTS.labels(websocket.state.user)
    clients.inc()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        clients.dec()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await events.aclose()
    for task in done:
        failure = None if task.cancelled() else task.exception()
        if failure is not None and not isinstance(failure, WebSocketDisconnect):
            raise failure
    end = next((t.result() for t in done if not t.cancelled() and t.exception() is None), None)
    if isinstance(end, End):
        with contextlib.suppress(Exception):  # the client may be gone or stalled: nothing more to say then
            await asyncio.wait_for(websocket.close(CLOSE_CODES[end], end.value), CLOSE_SECONDS)


async def _send(websocket: WebSocket, events: AsyncIterator[Item]) -> End:
    """Send every item as it comes; the End that ends the stream."""
    sent = metrics.WS_EVENTS.labels(websocket.state.user)
    async for item in events:
        if isinstance(item, End):
            return item
        if isinstance(item, list):
            for event in item:
                await websocket.send_text(event.ws)
            sent.inc(len(item))
        elif isinstance(item, Gap | Notice):
            await websocket.send_text(item.ws)
        elif isinstance(item, Heartbeat):
            await websocket.send_text(PING)
    return End.STOPPED  # not reached: a stream's last item is its End


async def _until_left(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it disconnects."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _until_set(event: asyncio.Event, end: End) -> End:
    await event.wait()
    return end
