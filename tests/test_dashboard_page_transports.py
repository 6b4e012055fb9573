"""The page on its two transports in Debian's Chromium: SSE by default, /ws with ?transport=ws, and the
notice it shows when readings it missed were trimmed from the log before it came back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import aiormq
import pytest
from playwright.async_api import Browser, Page, expect
from redis.asyncio import Redis

from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.broker import publish
from tests.support.browser import Pages, row_ids
from tests.support.launch import Launcher
from tests.support.ledger import log_ids
from tests.support.processes import Dashboard
from tests.support.readings import body
from tests.support.waiting import logged, wait_until


class Connections:
    """A page's stream connections, as 'sse' and 'ws', in the order it opened them."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("websocket", lambda ws: self.opened.append("ws") if "/ws?" in ws.url else None)
        page.on("request", lambda request: self.opened.append("sse") if "/events?" in request.url else None)


def iso(log_id: str) -> str:
    """A log id's time as the page writes it in a <time datetime>: UTC, milliseconds, Z."""
    ms = int(log_id.split("-")[0])
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_with_transport_ws_the_page_streams_over_a_websocket_and_resumes_after_a_restart(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    pages: Pages,
) -> None:
    """?transport=ws: live readings come over /ws (no EventSource at all); after the dashboard process
    restarts, the page reconnects by itself from its last id and shows every reading once, in log order."""
    await publish(amqp, settings.queue, [body(id=f"before{i}") for i in range(10)])
    await wait_until(lambda: logged(redis, keys, 10))
    dashboard: Dashboard = launch.dashboard("user1")
    connections = Connections()
    page = await pages.open(dashboard, "transport=ws", connections.watch)
    await publish(amqp, settings.queue, [body(id=f"live{i}", station="post-ws") for i in range(10)])
    await expect(page.locator("#readings tbody tr")).to_have_count(20)
    assert await row_ids(page) == list(reversed(await log_ids(redis, keys)))

    dashboard.stop()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    await publish(amqp, settings.queue, [body(id=f"missed{i}") for i in range(50)])
    await wait_until(lambda: logged(redis, keys, 70))
    dashboard.start()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15000)
    await expect(page.locator("#readings tbody tr")).to_have_count(70, timeout=10000)
    assert await row_ids(page) == list(reversed(await log_ids(redis, keys)))  # each once, newest first
    assert "sse" not in connections.opened
    assert connections.opened.count("ws") >= 2
    await page.close()
    assert pages.errors == []


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_readings_trimmed_while_the_page_was_away_are_named_in_a_notice(
    transport: str,
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    browser: Browser,
    pages: Pages,
    tmp_path: Path,
) -> None:
    """Two tabs open; the dashboard goes away; new readings come and the log is trimmed past the tabs' last id.

    Back, both tabs say "readings from <their last id's time> to <the oldest kept id's time> expired while
    you were away", show each new reading once, and the notice can be dismissed.
    """
    await publish(amqp, settings.queue, [body(id=f"old{i}") for i in range(10)])
    await wait_until(lambda: logged(redis, keys, 10))
    old = await log_ids(redis, keys)
    dashboard: Dashboard = launch.dashboard("user1")
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    query = "?transport=ws" if transport == "ws" else ""
    tabs = [await pages.tab(context, dashboard, query) for _ in range(2)]
    notice = [tab.locator("#gap-notice") for tab in tabs]
    for box in notice:
        await expect(box).to_be_hidden()

    dashboard.stop()
    await publish(amqp, settings.queue, [body(id=f"new{i}", station="post-02") for i in range(5)])
    await wait_until(lambda: logged(redis, keys, 15))
    new = (await log_ids(redis, keys))[10:]
    assert (
        await redis.xtrim(keys.log("user1"), minid=new[0], approximate=False) == 10
    )  # what TTL trimming does to the log
    dashboard.start()

    for tab, box in zip(tabs, notice, strict=True):
        await expect(box).to_be_visible(timeout=15000)
        await expect(box).to_contain_text("expired while you were away")
        await expect(box.locator("#gap-from")).to_have_attribute("datetime", iso(old[-1]))
        await expect(box.locator("#gap-to")).to_have_attribute("datetime", iso(new[0]))
        await expect(tab.locator("#readings tbody tr")).to_have_count(15)
        assert await row_ids(tab) == list(reversed(old + new))
    await tabs[0].screenshot(path=tmp_path / f"gap-notice-{transport}.png")
    await tabs[0].locator("#gap-dismiss").click()
    await expect(notice[0]).to_be_hidden()
    await expect(notice[1]).to_be_visible()  # dismissing is one tab's business
    await context.close()
    assert pages.errors == []
