"""Watch a dashboard page in headless Chromium for a while: JS heap, DOM nodes, main-thread busy time.

Run the system at the rate to test first, e.g. `sensorhub run --rate 200` (100 readings/s per user),
then: `.venv/bin/python scripts/page_soak.py 'http://127.0.0.1:8082/?token=...' --minutes 5`
"""

from __future__ import annotations

import argparse
import asyncio
import time

from playwright.async_api import async_playwright

ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


async def soak(url: str, minutes: float, every: float) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(url)
        await page.wait_for_selector('#connection[data-state="live"]')
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        print(f"{'t (s)':>6} {'heap MB':>8} {'DOM nodes':>10} {'rows':>5} {'busy %':>7} {'readings/s':>11}")
        started = last_t = time.monotonic()
        last_busy = None
        while time.monotonic() - started < minutes * 60:
            await asyncio.sleep(every)
            metrics = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
            now = time.monotonic()
            busy = metrics["TaskDuration"]
            rows = await page.locator("#readings tbody tr").count()
            share = "" if last_busy is None else f"{100 * (busy - last_busy) / (now - last_t):.1f}"
            rate = await page.locator("#rate").inner_text()
            print(
                f"{now - started:6.0f} {metrics['JSHeapUsedSize'] / 1e6:8.1f} {int(metrics['Nodes']):10d} "
                f"{rows:5d} {share:>7} {rate:>11}",
                flush=True,
            )
            last_busy, last_t = busy, now
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--every", type=float, default=30)
    args = parser.parse_args()
    asyncio.run(soak(args.url, args.minutes, args.every))


if __name__ == "__main__":
    main()
