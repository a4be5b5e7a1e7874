"""Shoot TensorBoard's time-series page (the scalars) with headless Chromium through Playwright.

    python scripts/tensorboard_screenshot.py URL OUTPUT.png

Uses the system's Chromium (Debian: /usr/bin/chromium; CHROMIUM overrides), so Playwright needs no browser
download. Charts are drawn as SVG (``forceSVG``): headless Chromium without a GPU leaves WebGL lines half drawn.
"""

import os
import sys

from playwright.sync_api import sync_playwright


def main(url: str, output: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                             args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1400, "height": 1040})
        page.goto(url)
        page.wait_for_selector("scalar-card", timeout=60_000)
        page.wait_for_timeout(3000)
        # whole curves, not the outlier-trimmed scale; then the settings pane out of the way
        page.locator("mat-checkbox", has_text="Ignore outliers in chart scaling").click()
        page.locator("button[aria-label='Toggle settings side pane']").click()
        page.wait_for_timeout(3000)
        page.screenshot(path=output)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
