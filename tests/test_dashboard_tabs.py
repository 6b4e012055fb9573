"""Many tabs, one connection: the tabs of one browser share one live stream (Web Locks + BroadcastChannel).

A browser allows 6 HTTP/1.1 connections per origin; with a stream per tab the 7th tab never goes live.
Each tab keeps its own table, so each must show every reading exactly once, whichever tab streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiormq
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect
from redis.asyncio import Redis

from sensorhub.keys import Keys
from sensorhub.settings import Settings
from tests.support.broker import publish
from tests.support.browser import Pages, row_ids
from tests.support.launch import Launcher
from tests.support.ledger import log_ids
from tests.support.processes import Dashboard
from tests.support.readings import body
from tests.support.sse import streams_to
from tests.support.waiting import logged, wait_until

TABS = 10


async def show_the_log(tabs: list[Page], redis: Redis, keys: Keys) -> bool:
    """True when every tab's table is the whole log: each reading once, newest first (for wait_until)."""
    expected = list(reversed(await log_ids(redis, keys)))
    return all([await row_ids(tab) == expected for tab in tabs])


async def roles(tabs: list[Page]) -> list[str | None]:
    return [await tab.evaluate("document.documentElement.dataset.streamRole") for tab in tabs]


async def pill_states(tabs: list[Page]) -> list[str | None]:
    return [await tab.locator("#connection").get_attribute("data-state") for tab in tabs]


async def one_leader(tabs: list[Page]) -> bool:
    return (await roles(tabs)).count("leader") == 1


@contextlib.asynccontextmanager
async def readings_flowing(amqp: aiormq.abc.AbstractChannel, settings: Settings, tag: str) -> AsyncIterator[list[int]]:
    """A reading published every 50 ms while the block runs; yields [how many were published (and confirmed)]."""
    count = [0]
    stop = asyncio.Event()

    async def flow() -> None:
        while not stop.is_set():
            await publish(amqp, settings.queue, [body(id=f"{tag}{count[0]}", station=f"post-{count[0] % 3}")])
            count[0] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    task = asyncio.create_task(flow())
    try:
        yield count
    finally:
        stop.set()
        await task


async def open_tabs(pages: Pages, context: BrowserContext, dashboard: Dashboard, n: int, query: str) -> list[Page]:
    return [await pages.tab(context, dashboard, query) for _ in range(n)]


@pytest.mark.parametrize("query", ["", "transport=ws"])
async def test_ten_tabs_share_one_stream_show_every_reading_once_and_survive_the_leader_closing(
    query: str,
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    browser: Browser,
    pages: Pages,
) -> None:
    """10 tabs opened while readings flow: all live on one connection, each table the whole log once, in order.

    The same on SSE (where a stream per tab would leave the 7th tab connecting forever) and on /ws.
    Then the leader tab closes while readings keep flowing: another tab takes the stream over from its own
    last id, and every tab left still shows the whole log, nothing missed, nothing twice.
    """
    await publish(amqp, settings.queue, [body(id=f"before{i}") for i in range(5)])
    await wait_until(lambda: logged(redis, keys, 5))
    dashboard = launch.dashboard("user1")
    context = await browser.new_context(viewport={"width": 1200, "height": 800})
    async with readings_flowing(amqp, settings, "opening") as opening:
        tabs = await open_tabs(pages, context, dashboard, TABS, query)  # each one waits for its pill to say live
    await wait_until(lambda: logged(redis, keys, 5 + opening[0]))
    await wait_until(lambda: show_the_log(tabs, redis, keys), 20, "every tab to show the whole log once")
    assert sorted(map(str, await roles(tabs))) == ["follower"] * (TABS - 1) + ["leader"]
    assert await streams_to(dashboard, 1)

    leader = tabs[(await roles(tabs)).index("leader")]
    async with readings_flowing(amqp, settings, "handover") as handover:
        await leader.close()
        tabs.remove(leader)
        await wait_until(lambda: one_leader(tabs), 10, "a tab to take the stream over")
        await wait_until(lambda: handover[0] >= 20, 20, "20 more readings published")
    await wait_until(lambda: logged(redis, keys, 5 + opening[0] + handover[0]))
    await wait_until(lambda: show_the_log(tabs, redis, keys), 20, "every tab left to show the whole log once")
    assert await one_leader(tabs)
    assert await pill_states(tabs) == ["live"] * (TABS - 1)
    await wait_until(lambda: streams_to(dashboard, 1), 10, "the old leader's stream to close")
    await context.close()
    assert pages.errors == []


async def test_a_tab_that_joins_late_fills_in_what_was_relayed_before_it_listened(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    browser: Browser,
    pages: Pages,
) -> None:
    """The server renders a tab's page; readings are relayed before its script runs; it fills them in from the API.

    Its script is held back by the test, so the hole between its page and the first relay it hears is sure.
    """
    dashboard = launch.dashboard("user1")
    context = await browser.new_context()
    leader = await pages.tab(context, dashboard)
    await publish(amqp, settings.queue, [body(id=f"first{i}") for i in range(5)])
    await wait_until(lambda: show_the_log([leader], redis, keys), what="the leader to show 5 readings")
    page_last_id = (await log_ids(redis, keys))[-1]

    late = await context.new_page()
    pages.watch(late)
    script = asyncio.Event()

    async def hold(route: Route) -> None:
        await script.wait()
        await route.continue_()

    await late.route("**/static/js/main.js", hold)
    fills: list[str] = []
    late.on("request", lambda request: fills.append(request.url) if "/api/readings?" in request.url else None)
    await late.goto(f"{dashboard.url}/", wait_until="commit")
    await expect(late.locator("#readings tbody tr")).to_have_count(5)  # rendered by the server; no script yet
    await publish(amqp, settings.queue, [body(id=f"relayed{i}") for i in range(10)])
    await wait_until(lambda: show_the_log([leader], redis, keys), what="the leader to show 15 readings")
    script.set()
    await expect(late.locator("#connection")).to_have_attribute("data-state", "live")
    await publish(amqp, settings.queue, [body(id=f"after{i}") for i in range(5)])
    await wait_until(lambda: logged(redis, keys, 20))
    await wait_until(lambda: show_the_log([leader, late], redis, keys), what="both tabs to show the whole log once")
    assert await roles([leader, late]) == ["leader", "follower"]
    assert any(f"after={page_last_id}" in url for url in fills)
    await context.close()
    assert pages.errors == []
