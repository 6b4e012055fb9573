"""What the browser-like stream clients (SseClient, WsClient) share: a background loop that resumes from the last id."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.processes import Dashboard


class ResumingClient:
    """Reads a dashboard's stream in a task of its own until closed; `_run` connects, and resumes after `last_id`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.events: list[tuple[str, str]] = []  # (log id, reading id) as received
        self.connects = 0
        self.connected = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @property
    def ids(self) -> list[str]:
        return [reading_id for _, reading_id in self.events]

    @property
    def last_id(self) -> str | None:
        """The log id to resume after: that of the last reading received."""
        return self.events[-1][0] if self.events else None

    def _connected(self) -> None:
        self.connects += 1
        self.connected.set()

    async def _run(self) -> None:
        raise NotImplementedError

    async def wait_connected(self) -> None:
        await asyncio.wait_for(self.connected.wait(), 10)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
