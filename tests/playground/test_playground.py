"""The playground in a real browser (Debian's Chromium, driven by Playwright): pick
Python, run a program that asks for input, type the answer into the running
program, see the reply and the verdict. A screenshot goes to artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright
import pytest

from kit.servers import Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LIMIT_MS = 30_000  # a guard against a hang, not a measurement

PROGRAM = """name = input("Who goes there? ")
print(f"Welcome, {name}!")
"""


@pytest.fixture
def page(server: Server) -> Iterator[playwright.Page]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make setup` installs it"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.set_default_timeout(LIMIT_MS)
            yield page
        finally:
            browser.close()


def test_run_a_program_and_answer_it_in_the_terminal(server: Server, page: playwright.Page) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")

    page.wait_for_selector("#run:not([disabled])")
    page.select_option("#language", "python")
    option = page.locator("#language option[value=python]").inner_text()
    assert option.startswith("python 3."), option  # the version comes from /v1/languages

    editor = page.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    editor.fill(PROGRAM)
    assert page.locator(".cm-lineNumbers").is_visible()
    page.keyboard.press("Control+Enter")

    terminal = page.locator("#terminal")
    page.wait_for_function(
        "document.querySelector('#terminal').innerText.includes('Who goes there?')"
    )
    terminal.click()
    page.keyboard.type("Grace")
    page.keyboard.press("Enter")
    page.wait_for_function("document.body.dataset.state === 'done'")

    assert "Welcome, Grace!" in terminal.inner_text()
    assert page.locator("#verdict").inner_text().lower() == "ok"
    metrics = page.locator("#metrics").inner_text()
    assert "time" in metrics and "memory" in metrics
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"))

    # Everything came from execbox itself: the playground works offline.
    assert all(url.startswith(server.url) for url in requests), requests
    assert not errors
