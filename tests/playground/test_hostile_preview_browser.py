"""Issue 19, item 4, in a real browser (Debian's Chromium, driven by Playwright): a
visitor whose playground holds an API key opens a preview link of a hostile app, in
the same tab. On the path form (execbox's origin) the page runs in an opaque origin:
it reads no storage and no cookie, cannot read the API's answers, and so sends its
sandbox nothing of the visitor's. On its own host the app works, with its own origin."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import playwright.sync_api as playwright
import pytest
from test_playground import CHROMIUM, CHROMIUM_ARGS, LIMIT_MS

from kit.previews import (
    APP_PORT,
    preview_host,
    reports,
    serve_previews,
    start_hostile_app,
    wait_until,
)
from kit.servers import API_KEY, Server, no_sandbox_process_left


@pytest.fixture(scope="module")
def preview_server() -> Iterator[Server]:
    yield from serve_previews()


@pytest.fixture
def client(preview_server: Server) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=preview_server.url, timeout=60, headers=headers) as client:
        yield client


@pytest.fixture
def app(client: httpx.Client, preview_server: Server) -> Iterator[tuple[str, str]]:
    """The hostile app's sandbox: its id and preview token."""
    sid, token = start_hostile_app(client)
    yield sid, token
    client.delete(f"/v1/sandboxes/{sid}")
    assert no_sandbox_process_left(preview_server)


@pytest.fixture
def page(preview_server: Server) -> Iterator[playwright.Page]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make setup` installs it"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(LIMIT_MS)
            yield page
        finally:
            browser.close()


def save_key_in_the_playground(page: playwright.Page, server: Server) -> None:
    page.goto(server.url + "/")
    page.fill("#apikey", API_KEY)
    page.dispatch_event("#apikey", "change")
    page.wait_for_selector("#run:not([disabled])")  # the key opened /v1/languages
    # Where playgrounds before this fix kept it: a visitor may still have it there.
    page.evaluate("key => localStorage.setItem('execbox.apiKey', key)", API_KEY)


def open_and_wait_for_report(
    page: playwright.Page, client: httpx.Client, sid: str, url: str
) -> dict[str, str]:
    before = len(reports(client, sid))
    page.goto(url)
    page.wait_for_function("document.title === 'reported'")
    sent = wait_until(lambda: reports(client, sid)[before:])
    assert len(sent) == 1
    report: dict[str, str] = json.loads(sent[0])
    return report


def test_a_path_form_preview_gets_nothing_of_the_visitor(
    page: playwright.Page, client: httpx.Client, preview_server: Server, app: tuple[str, str]
) -> None:
    sid, token = app
    save_key_in_the_playground(page, preview_server)
    # The visitor also holds some other cookie of this origin (an SSO session, say).
    sso = {"name": "sso", "value": "visitor-secret", "url": preview_server.url}
    page.context.add_cookies([sso])
    url = f"{preview_server.url}/v1/sandboxes/{sid}/ports/{APP_PORT}/page"
    report = open_and_wait_for_report(page, client, sid, f"{url}?execbox_preview_token={token}")

    assert report["origin"] == "null", report  # opaque
    for taken in ("localStorage", "sessionStorage", "cookie"):
        assert report[taken] == "blocked: SecurityError", report
    assert report["executions"] == "blocked: TypeError", report  # CORS: unreadable
    assert API_KEY not in json.dumps(report) and "visitor-secret" not in json.dumps(report)
    # The playground, back in its own tab's origin, still has its key.
    page.goto(preview_server.url + "/")
    page.wait_for_selector("#run:not([disabled])")


def test_a_host_form_preview_works_in_an_origin_of_its_own(
    page: playwright.Page, client: httpx.Client, preview_server: Server, app: tuple[str, str]
) -> None:
    sid, token = app
    save_key_in_the_playground(page, preview_server)
    origin = f"http://{preview_host(sid, APP_PORT, preview_server)}"
    report = open_and_wait_for_report(
        page, client, sid, f"{origin}/page?execbox_preview_token={token}"
    )

    assert report["origin"] == origin, report
    assert report["localStorage"] == report["sessionStorage"] == "{}", report  # its own
    assert report["cookie"] == "", report  # the token's cookie is HttpOnly
    # Its /v1/executions is the app's own page, reached with the token's cookie.
    assert report["executions"] == "/v1/executions None", report
    assert API_KEY not in json.dumps(report)
