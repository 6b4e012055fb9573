"""What a test starts, in one place, so that all of it is closed after the test whatever happened."""

from __future__ import annotations

import contextlib
from typing import TypeVar

from sensorhub.settings import Settings
from tests.support.processes import Dashboard, Process
from tests.support.proxy import Proxy
from tests.support.sse import SseClient
from tests.support.web import Web

P = TypeVar("P", bound=Process)


class Launcher:
    """Starts sensorhub processes, dashboards, proxies and SSE clients; `aclose()` ends them all, newest first.

    Each uses the test's settings unless given others. Processes are killed, not stopped: a test that
    is about stopping stops them itself. What each process said is printed, for a failed test's report.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._closing = contextlib.AsyncExitStack()

    def sensorhub(self, *args: str, settings: Settings | None = None) -> Process:
        """A started `sensorhub ARGS`."""
        return self._end_later(Process(settings or self.settings, *args)).start()

    def dashboard(
        self,
        user: str = "user1",
        *,
        settings: Settings | None = None,
        token: str | None = None,
        port: int | None = None,
    ) -> Dashboard:
        """A running `sensorhub dashboard --user USER` (a token of its own unless given one)."""
        return self._end_later(Dashboard(settings or self.settings, user, token, port)).start()

    def web(self, *, settings: Settings | None = None) -> Web:
        """A running `sensorhub web` (with a token secret of the test's own unless the settings have one)."""
        return self._end_later(Web(settings or self.settings)).start()

    def proxy(self, url: str) -> Proxy:
        """A Proxy in front of the server of that URL."""
        proxy = Proxy.for_url(url)
        self._closing.callback(proxy.close)
        return proxy

    async def sse(self, dashboard: Dashboard) -> SseClient:
        """A browser-like SSE client of the dashboard, once connected."""
        client = SseClient(dashboard)
        self._closing.push_async_callback(client.close)
        await client.wait_connected()
        return client

    async def aclose(self) -> None:
        await self._closing.aclose()

    def _end_later(self, process: P) -> P:
        self._closing.callback(_end, process)
        return process


def _end(process: Process) -> None:
    process.kill()
    print(process.report())  # shown by pytest only when the test failed
