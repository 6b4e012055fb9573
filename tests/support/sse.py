"""Clients of a dashboard's /events: one that reads N events, and one that resumes like a browser."""

from __future__ import annotations

import asyncio
import json

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from tests.support.processes import Dashboard
from tests.support.resuming import ResumingClient


async def streams_to(dashboard: Dashboard, clients: int) -> bool:
    """True when the dashboard streams to exactly `clients` clients (for wait_until): a stream
    without a cursor starts where the feed is, so a reading stored before it is open is not in it."""
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        return bool((await client.get("/healthz")).json()["sse_clients"] == clients)


async def read_events(
    dashboard: Dashboard, count: int, *, last_id: str | None = None, header: bool = True, timeout: float = 15
) -> list[ServerSentEvent]:
    """Read `count` reading events from /events, after `last_id` (as Last-Event-ID, or ?last_id= if not `header`)."""
    headers = dict(dashboard.auth)
    params = {}
    if last_id is not None:
        if header:
            headers["Last-Event-ID"] = last_id
        else:
            params["last_id"] = last_id
    events: list[ServerSentEvent] = []
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        aconnect_sse(client, "GET", f"{dashboard.url}/events", headers=headers, params=params) as source,
    ):
        async with asyncio.timeout(timeout):
            async for event in source.aiter_sse():
                if event.event == "reading":
                    events.append(event)
                    if len(events) == count:
                        break
    return events


class SseClient(ResumingClient):
    """An EventSource on /events: after any drop it waits `retry` and resumes with Last-Event-ID."""

    async def _run(self) -> None:
        retry = 1.0
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=40)) as client:
            while True:
                headers = dict(self.dashboard.auth)
                if self.last_id is not None:
                    headers["Last-Event-ID"] = self.last_id
                try:
                    async with aconnect_sse(client, "GET", f"{self.dashboard.url}/events", headers=headers) as source:
                        async for event in source.aiter_sse():
                            if event.retry is not None:
                                retry = event.retry / 1000
                                self._connected()
                            if event.event == "reading":
                                self.events.append((event.id, json.loads(event.data)["id"]))
                except (httpx.HTTPError, SSEError):
                    pass
                await asyncio.sleep(retry)
