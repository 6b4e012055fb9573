"""Alerts and station health on the page, in Debian's headless Chromium."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from playwright.async_api import expect

from sensorhub.settings import Settings
from tests.support.browser import LIVE_TIMEOUT_MS, Pages
from tests.support.collector import Fill
from tests.support.launch import Launcher
from tests.support.readings import body
from tests.support.services import free_port

BANNER_TIMEOUT_MS = 15_000  # the evaluator's and the page's polls, and a fetch, on a slow machine


def _temps(start: datetime, temps: list[float], every: int = 1) -> list[bytes]:
    return [body(ts=(start + timedelta(seconds=i * every)).isoformat(), temperature=t) for i, t in enumerate(temps)]


async def test_a_rule_added_on_the_page_shows_its_banner_while_firing_and_clears_it(
    filled: Fill, launch: Launcher, pages: Pages, settings: Settings
) -> None:
    """The form adds `above 30 for 10 s, clear 28`; readings cross it: the banner appears, the card says
    online and the summary counts it; 27 clears the banner and the history keeps both transitions;
    the next firing is acknowledged from the banner."""
    launch.sensorhub("alerts", "--http-port", str(free_port()))
    dashboard = launch.dashboard("user1")
    start = datetime.now(UTC) - timedelta(minutes=2)
    # Every 10 s, so the station is late only after 30 s of silence: opening the page and filling
    # the form take longer than 3 s on a slow machine.
    await filled(_temps(start - timedelta(seconds=20), [20, 21], every=10))
    page = await pages.open(dashboard)
    form = page.locator("#rule-form")
    await form.locator('[name="kind"]').select_option("above")
    await form.locator('[name="quantity"]').select_option("temperature")
    await form.locator('[name="value"]').fill("30")
    await form.locator('[name="clear"]').fill("28")
    await form.locator('[name="for_seconds"]').fill("10")
    await form.locator('button[type="submit"]').click()
    await expect(page.locator("#rules li")).to_have_count(1)
    await expect(page.locator("#rules li .rule-text")).to_contain_text("temperature above 30")
    card = page.locator('#stations [data-station="post-01"]')
    await expect(card.locator(".health-badge")).to_have_text("online")
    await expect(page.locator("#health-summary")).to_have_text("1 online · 0 late · 0 offline")

    banner = page.locator("#alert-banner")
    await expect(banner).to_be_hidden()
    await filled(_temps(start + timedelta(seconds=2), [31] * 11))
    await expect(banner).to_be_visible(timeout=BANNER_TIMEOUT_MS)
    await expect(banner.locator("li")).to_have_count(1)
    await expect(banner.locator("li")).to_contain_text("post-01: temperature 31")

    await filled(_temps(start + timedelta(seconds=13), [29, 31, 27]))
    await expect(banner).to_be_hidden(timeout=BANNER_TIMEOUT_MS)
    history = page.locator("#alert-history li")
    await expect(history).to_have_count(2)
    await expect(history.nth(0).locator(".history-state")).to_have_text("resolved")
    await expect(history.nth(1).locator(".history-state")).to_have_text("firing")

    await filled(_temps(start + timedelta(seconds=16), [32] * 11))
    await expect(banner).to_be_visible(timeout=BANNER_TIMEOUT_MS)
    await banner.locator(".alert-ack").click()
    await expect(banner).to_be_hidden()
    await expect(history.nth(0).locator(".history-state")).to_have_text("firing (acknowledged)")
    await page.reload()
    await expect(page.locator("#alert-history li")).to_have_count(3)
    await expect(banner).to_be_hidden()
    assert pages.errors == []


async def test_a_bad_rule_is_refused_on_the_page_with_the_servers_reason(launch: Launcher, pages: Pages) -> None:
    page = await pages.open(launch.dashboard("user1"))
    form = page.locator("#rule-form")
    await form.locator('[name="value"]').fill("10")
    await form.locator('[name="clear"]').fill("12")
    await form.locator('button[type="submit"]').click()
    await expect(page.locator("#rule-error")).to_contain_text("must not be above")
    await expect(page.locator("#rules li")).to_have_count(0)
    assert pages.errors == []


async def test_a_page_whose_dashboard_was_down_shows_the_alert_it_missed(
    filled: Fill, launch: Launcher, pages: Pages
) -> None:
    """The dashboard restarts while a rule starts firing: once the page is live again, the banner is there."""
    launch.sensorhub("alerts", "--http-port", str(free_port()))
    dashboard = launch.dashboard("user1")
    page = await pages.open(dashboard)
    rule = '{"id": "hot", "station": "*", "kind": "above", "quantity": "temperature", "value": 30}'
    answer = await page.request.post(f"{dashboard.url}/api/rules", data=rule, headers={"Origin": dashboard.url})
    assert answer.status == 201
    dashboard.kill()
    await expect(page.locator("#connection")).not_to_have_attribute("data-state", "live")
    await filled(_temps(datetime.now(UTC), [35]))
    dashboard.start()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#alert-banner li")).to_contain_text("post-01: temperature 35")
    await expect(page.locator("#alert-history li")).to_have_count(1)
    assert pages.errors == []
