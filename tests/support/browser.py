"""Debian's Chromium driven by Playwright: the dashboard page as its user opens it, in one or many tabs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.support.processes import Dashboard

CHROMIUM = "/usr/bin/chromium"
LIVE_TIMEOUT_MS = 15_000  # a fresh tab against a just-started dashboard, on a slow machine
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed after the block."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


class Pages:
    """Opens dashboard pages as their user would, and keeps every uncaught script error of any of them.

    An exception raised in a Playwright event handler never reaches the test, so errors are kept
    here and each test ends by asserting there were none.
    """

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.errors: list[str] = []

    async def open(self, dashboard: Dashboard, query: str = "", before: Callable[[Page], object] | None = None) -> Page:
        """The printed URL with ?token= (and `query`, e.g. "transport=ws"), in a profile of its own, then live.

        `before(page)` runs before the page loads, e.g. to watch its connections.
        """
        page = await self.browser.new_page(viewport={"width": 1400, "height": 1000})
        self.watch(page)
        if before is not None:
            before(page)
        await page.goto(f"{dashboard.url}/?token={dashboard.token}" + (f"&{query}" if query else ""))
        assert page.url == f"{dashboard.url}/" + (f"?{query}" if query else "")  # the token traded for a cookie
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT_MS)
        return page

    async def tab(self, context: BrowserContext, dashboard: Dashboard, query: str = "") -> Page:
        """One more tab of the dashboard in `context` (one browser profile), signed in once, then live."""
        signed_in = bool(await context.cookies(dashboard.url))
        page = await context.new_page()
        self.watch(page)
        token = "" if signed_in else f"token={dashboard.token}"
        await page.goto(f"{dashboard.url}/?" + "&".join(filter(None, [token, query.lstrip("?")])))
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT_MS)
        return page

    def watch(self, page: Page) -> None:
        """Keep its uncaught script errors."""
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))


async def row_ids(page: Page) -> list[str]:
    """The log ids of the table's rows, top (newest) first."""
    return await page.locator("#readings tbody tr").evaluate_all("rows => rows.map(r => r.dataset.logId)")
