"""The dashboard page in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import time
import uuid

import aiormq
from playwright.async_api import Browser, expect
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


async def test_a_reading_appears_within_a_second_of_being_published(
    settings: Settings,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    pages: Pages,
) -> None:
    """Published and confirmed by the broker: on the open page, card and row, in under a second."""
    page = await pages.open(launch.dashboard("user1"))
    station = f"post-{uuid.uuid4().hex[:6]}"
    await publish(amqp, settings.queue, [body(station=station, temperature=-3.25, address="Невский проспект, 1")])
    started = time.monotonic()
    card = page.locator(f'#stations [data-station="{station}"]')
    await expect(card).to_be_visible(timeout=1000)
    await expect(page.locator("#readings tbody tr").first).to_have_attribute("data-station", station, timeout=1000)
    assert time.monotonic() - started < 1.0
    await expect(card.locator('[data-field="temperature"]')).to_have_text("-3.3")  # fixed decimals
    await expect(card.locator(".card-address")).to_have_text("Невский проспект, 1")
    await page.close()
    assert pages.errors == []


async def test_the_page_is_rendered_on_the_server_before_any_script_runs(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    browser: Browser,
) -> None:
    """With JavaScript off, the page already shows the cards and the newest readings."""
    await publish(amqp, settings.queue, [body(id=f"s{i}", station=f"post-{i % 2}") for i in range(10)])
    await wait_until(lambda: logged(redis, keys, 10))
    dashboard = launch.dashboard("user1")
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(f"{dashboard.url}/?token={dashboard.token}")
    assert await page.locator("#stations [data-station]").count() == 2
    assert await page.locator("#readings tbody tr").count() == 10
    await context.close()


async def test_after_the_dashboard_process_restarts_the_open_page_shows_every_missed_reading_once_in_order(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    pages: Pages,
) -> None:
    """Dashboard stopped while readings flow, then restarted: the page catches up, nothing twice, in order."""
    await publish(amqp, settings.queue, [body(id=f"before{i}") for i in range(20)])
    await wait_until(lambda: logged(redis, keys, 20))
    dashboard: Dashboard = launch.dashboard("user1")
    page = await pages.open(dashboard)
    assert len(await row_ids(page)) == 20

    dashboard.stop()
    await expect(page.locator("#connection")).not_to_have_attribute("data-state", "live")
    for batch in range(5):
        await publish(amqp, settings.queue, [body(id=f"missed{batch}-{i}") for i in range(20)])
    await wait_until(lambda: logged(redis, keys, 120))
    dashboard.start()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15000)
    await expect(page.locator("#readings tbody tr")).to_have_count(120, timeout=10000)

    ids = await row_ids(page)
    assert ids == list(reversed(await log_ids(redis, keys)))  # every reading once, newest first, in log order
    await page.close()
    assert pages.errors == []


async def test_an_address_with_markup_is_shown_as_text(
    settings: Settings,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    pages: Pages,
) -> None:
    """`<img src=x onerror=alert(1)>` in a station or address is displayed literally and never runs."""
    evil = "<img src=x onerror=alert(1)>"
    dashboard = launch.dashboard("user1")
    page = await pages.open(dashboard)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await publish(amqp, settings.queue, [body(station="<b>x</b>", address=evil)])
    card = page.locator("#stations [data-station='<b>x</b>']")
    await expect(card.locator(".card-address")).to_have_text(evil)
    await expect(page.locator("#readings tbody tr").first.locator(".address")).to_have_text(evil)
    assert await page.locator("main img").count() == 0
    assert await page.locator("main b").count() == 0

    reloaded = await pages.open(dashboard)  # the same, rendered by the server
    await expect(reloaded.locator("#stations [data-station='<b>x</b>'] .card-address")).to_have_text(evil)
    assert await reloaded.locator("main img").count() == 0
    assert dialogs == []
    await page.close()
    await reloaded.close()
    assert pages.errors == []


async def test_user2s_readings_never_reach_user1s_page(
    settings: Settings,
    keys: Keys,
    redis: Redis,
    amqp: aiormq.abc.AbstractChannel,
    collector: None,
    launch: Launcher,
    pages: Pages,
) -> None:
    """Readings of user2 arrive live and in history on user2's page only."""
    user1_page = await pages.open(launch.dashboard("user1"))
    await publish(amqp, settings.queue, [body(user="user2", station="secret-of-user2", id=f"u2-{i}") for i in range(5)])
    await publish(amqp, settings.queue, [body(station="mine", id="u1")])
    await expect(user1_page.locator("#stations [data-station='mine']")).to_be_visible()
    user2_page = await pages.open(launch.dashboard("user2"))
    await expect(user2_page.locator("#readings tbody tr")).to_have_count(5)
    await user1_page.reload()
    assert "secret-of-user2" not in await user1_page.content()
    assert await user1_page.locator("#readings tbody tr").count() == 1
    await user1_page.close()
    await user2_page.close()
    assert pages.errors == []
