"""Clients of a dashboard's /ws: one connection at a time, and one that resumes like the page does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.support.processes import Dashboard
from tests.support.resuming import ResumingClient


def ws_url(dashboard: Dashboard, last_id: str | None = None, **params: str) -> str:
    query = {**params, **({"last_id": last_id} if last_id is not None else {})}
    tail = "&".join(f"{name}={value}" for name, value in query.items())
    return dashboard.url.replace("http://", "ws://", 1) + "/ws" + (f"?{tail}" if tail else "")


def open_ws(
    dashboard: Dashboard, last_id: str | None = None, *, params: dict[str, str] | None = None, **options: Any
) -> connect:
    """`async with open_ws(...) as ws`: /ws with the dashboard's bearer token unless `additional_headers` says else.

    No proxy from the environment; no compression, so bytes on the wire are the frames themselves.
    """
    options.setdefault("additional_headers", dashboard.auth)
    url = ws_url(dashboard, last_id, **(params or {}))
    return connect(url, proxy=None, compression=None, open_timeout=10, **options)


async def frames(
    ws: ClientConnection, count: int, *, kind: str = "reading", timeout: float = 15
) -> list[dict[str, Any]]:
    """The next `count` frames of type `kind` (other types are skipped), parsed."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                got.append(frame)
    return got


class WsClient(ResumingClient):
    """The page's WebSocket: after any close but 1008 it waits `retry` s and reconnects with ?last_id=."""

    def __init__(self, dashboard: Dashboard, retry: float = 0.5) -> None:
        self.retry = retry
        self.other: list[dict[str, Any]] = []  # gap and ping frames
        self.close_codes: list[int | None] = []
        super().__init__(dashboard)

    async def _run(self) -> None:
        while True:
            try:
                async with open_ws(self.dashboard, self.last_id) as ws:
                    self._connected()
                    async for message in ws:
                        frame = json.loads(message)
                        if frame["type"] == "reading":
                            self.events.append((frame["id"], frame["reading"]["id"]))
                        else:
                            self.other.append(frame)
                    self.close_codes.append(ws.close_code)
            except ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, InvalidHandshake, TimeoutError):
                pass
            if self.close_codes and self.close_codes[-1] == 1008:
                return
            await asyncio.sleep(self.retry)
