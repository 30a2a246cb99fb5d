"""The /connections page in Debian's chromium driven by Playwright: it loads, shows the connections that exist,
sorts and filters, and drops a closed connection on refresh."""

from __future__ import annotations

import pytest
from _helpers import require_binary, require_module
from _live import LiveServer

# What the browser needs here: no sandbox (root), and nothing that reaches the network by itself.
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    chromium = require_binary("chromium", "chromium")
    sync_api = require_module("playwright.sync_api", "playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _column(page, field: str) -> list[str]:
    return page.eval_on_selector_all(f"#rows td[data-field={field}]", "els => els.map(e => e.title)")


def _refresh(page) -> None:
    """Ask the page for a refresh and wait until its table was redrawn from the response."""
    before = int(page.evaluate("document.body.dataset.refreshes || '0'"))
    page.evaluate("refresh()")
    page.wait_for_function(f"Number(document.body.dataset.refreshes || 0) > {before}")


def test_page_sorts_filters_and_follows_closes(browser, tmp_path):
    with LiveServer("asyncio") as s:
        s.open("alpha", 3000)
        s.open("beta", 1000)
        gone = s.open("gamma", 2000)
        paused = s.open("delta", 500)
        s.pause(paused)
        # The page's CSP forbids eval, which Playwright's string predicates use: lifted for the test only.
        context = browser.new_context(viewport={"width": 1440, "height": 560}, bypass_csp=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(s.url + "?sort=rx_bytes&order=desc")
        page.wait_for_function("document.querySelectorAll('#rows tr').length === 8")
        assert set(_column(page, "name")) == {"alpha", "beta", "gamma", "delta", "echo"}

        # sorted as the URL asked, then by a click on a header (twice: the other way round)
        rx = [int(v) for v in _column(page, "rx_bytes")]
        assert rx == sorted(rx, reverse=True) and rx[0] == 3000
        page.click("#head th[data-field=name]")
        page.wait_for_function("document.querySelector('#head th.sorted').dataset.field === 'name'")
        names = _column(page, "name")
        assert names == sorted(names)
        page.click("#head th[data-field=name]")
        page.wait_for_function("document.querySelector('#head th.sorted.asc') === null")
        assert _column(page, "name") == sorted(names, reverse=True)

        # a filter: clients only, then paused only
        page.select_option("#f-side", "client")
        page.wait_for_function(
            "[...document.querySelectorAll('#rows td[data-field=side]')].every(e => e.title === 'client')"
        )
        assert sorted(_column(page, "name")) == ["alpha", "beta", "delta", "gamma"]
        page.select_option("#f-side", "")
        page.select_option("#f-paused", "any")
        page.wait_for_function("document.querySelectorAll('#rows tr').length === 1")
        assert _column(page, "name") == ["echo"] and "paused" in page.inner_text("#rows")
        page.select_option("#f-paused", "")
        page.wait_for_function("document.querySelectorAll('#rows tr').length === 8")

        # a connection that closes disappears on the next refresh
        s.close(gone)
        _refresh(page)
        assert "gamma" not in _column(page, "name") and len(_column(page, "name")) == 6
        assert errors == []

        page.click("#head th[data-field=rx_bytes]")
        page.wait_for_function("document.querySelector('#head th.sorted').dataset.field === 'rx_bytes'")
        shot = tmp_path / "live-view.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG")
        context.close()
