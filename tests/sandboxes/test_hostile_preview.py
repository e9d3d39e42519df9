"""Hostile preview apps through a real server (issue 19, items 4 and 11): on the path
form, which shares execbox's origin, an app is confined (CSP sandbox, no cookies either
way, no origin-wide headers); on its own host, `{port}-{id}.{EXECBOX_PREVIEW_DOMAIN}`,
it is served whatever the path, with the same authentication; whatever the app or the
caller sends, the answer is a relay or a 4xx/502 problem, never a 500. The browser half
of the attack is tests/playground/test_hostile_preview_browser.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus

from execbox.api.problems import PROBLEM_MEDIA_TYPE
from kit.previews import APP_PORT, WS_PORT, preview_host, serve_previews, start_hostile_app
from kit.servers import API_KEY, Server, no_sandbox_process_left

SANDBOX_CSP = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve_previews()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def app(client: httpx.Client, server: Server) -> Iterator[tuple[str, str]]:
    """The hostile app's sandbox (id, preview token), shared by the module's tests."""
    sid, token = start_hostile_app(client)
    yield sid, token
    client.delete(f"/v1/sandboxes/{sid}")
    assert no_sandbox_process_left(server)


@pytest.fixture
def browser(server: Server) -> Iterator[httpx.Client]:
    """A visitor without an API key."""
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        yield browser


def healthy(client: httpx.Client, server: Server) -> None:
    """The server answers, and logged no error (every exception and 500 of ours does)."""
    assert client.get("/health").status_code == 200
    assert not [r for r in server.log_records() if r.get("level") == "error"]


def test_path_form_confines_the_app(
    client: httpx.Client, server: Server, browser: httpx.Client, app: tuple[str, str]
) -> None:
    sid, token = app
    base = f"/v1/sandboxes/{sid}/ports/{APP_PORT}"
    browser.cookies.set("sso_session", "visitor-secret", path="/")
    answer = browser.get(f"{base}/headers", params={"execbox_preview_token": token})
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == SANDBOX_CSP
    # Our cookie only: the app's two are dropped, and so is its Clear-Site-Data.
    cookies = answer.headers.get_list("set-cookie")
    assert len(cookies) == 1 and cookies[0].startswith("execbox_preview="), cookies
    assert "clear-site-data" not in answer.headers
    assert answer.headers.get_list("link") == ["</a.css>; rel=preload", "</b.js>; rel=preload"]
    assert answer.headers.get_list("vary") == ["Accept", "Origin"]
    # The visitor's other cookies (and execbox's) never reach the app.
    echoed = browser.get(f"{base}/echo%3Fnot-a-query?q=1")
    assert echoed.status_code == 200 and echoed.text == "/echo%3Fnot-a-query?q=1 None"
    assert echoed.headers["content-security-policy"] == SANDBOX_CSP
    healthy(client, server)


def test_host_form_serves_every_path_with_the_same_authentication(
    client: httpx.Client, server: Server, browser: httpx.Client, app: tuple[str, str]
) -> None:
    sid, token = app
    host = {"Host": preview_host(sid, APP_PORT, server)}
    # API paths on a preview host are the app's, and need what the path form needs.
    assert browser.get("/v1/executions", headers=host).status_code == 401
    wrong = {"execbox_preview_token": "wrong"}
    assert browser.get("/", params=wrong, headers=host).status_code == 401
    other = {"Host": preview_host("sb0000000000000000000000000", APP_PORT, server)}
    assert browser.get("/", headers=other).status_code == 401  # existence: key holders only
    assert client.get("/", headers=other).status_code == 404
    first = browser.get("/v1/executions", params={"execbox_preview_token": token}, headers=host)
    assert first.status_code == 200 and first.text == "/v1/executions None"
    assert "content-security-policy" not in first.headers
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("execbox_preview=") and "Path=/;" in cookie
    # Then the cookie opens it; the app gets its own cookies, never ours.
    echoed = browser.get("/x", headers={**host, "Cookie": f"execbox_preview={token}; app=1"})
    assert echoed.text == "/x app=1"
    # The app's cookies stay on its own host (no Domain), repeated headers all relayed.
    answer = client.get("/headers", headers=host)
    assert answer.headers.get_list("set-cookie") == ["app=1; Path=/", "shared=1; Path=/"]
    assert answer.headers.get_list("vary") == ["Accept", "Origin"]
    # An API key works as on the path form; so does a WebSocket.
    assert client.get("/anything", headers=host).text.startswith("/anything ")

    async def echo() -> str:
        url = f"ws://127.0.0.1:{server.port}/any/path"
        ws_host = {"Host": preview_host(sid, WS_PORT, server), "X-API-Key": API_KEY}
        async with websockets.connect(url, additional_headers=ws_host) as ws:
            await ws.send("ping")
            return str(await ws.recv())

    assert asyncio.run(echo()) == "echo: ping"
    healthy(client, server)


def test_preview_urls_use_the_host_form(
    client: httpx.Client, server: Server, app: tuple[str, str]
) -> None:
    sid, _ = app
    build = client.post(
        f"/v1/sandboxes/{sid}/builds",
        json={"start": {"cmd": "exec python3 hostile_preview.py 8001", "port": 8001}},
    )
    assert build.status_code == 202, build.text
    with client.stream("GET", f"/v1/sandboxes/{sid}/builds/{build.json()['id']}/events") as events:
        for _ in events.iter_lines():
            pass
    url = f"http://8001-{sid}.preview.localhost:{server.port}/"
    built = client.get(f"/v1/sandboxes/{sid}/builds/{build.json()['id']}").json()
    assert built["status"] == "ready" and built["preview_url"] == url
    assert client.get(f"/v1/sandboxes/{sid}").json()["preview_url"] == url


def test_bad_hosts_ports_and_statuses_are_problems(
    client: httpx.Client, server: Server, app: tuple[str, str]
) -> None:
    sid, _ = app
    weird = client.get(f"/v1/sandboxes/{sid}/ports/{APP_PORT}/", params={"status": "999"})
    assert weird.status_code == 502 and "status 999" in weird.json()["detail"]
    assert weird.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert client.get(f"/v1/sandboxes/{sid}/ports/99999/").status_code == 422
    encoded_slash = client.get(f"/v1/sandboxes/{sid}/ports/{APP_PORT}%2Fx%3Fy")
    assert encoded_slash.status_code == 200 and encoded_slash.text == "/x%3Fy None"
    assert client.get("/", headers={"Host": f"99999-{sid}.preview.localhost"}).status_code == 422
    assert client.get("/", headers={"Host": "www.preview.localhost"}).status_code == 404
    qualified = client.get("/", headers={"Host": f"{APP_PORT}-{sid}.preview.localhost."})
    assert qualified.status_code == 200 and qualified.text.startswith("/ ")  # the app
    for port, host in ((99999, None), (WS_PORT, f"99999-{sid}.preview.localhost")):

        async def refused(port: int = port, host: str | None = host) -> int:
            url = f"ws://127.0.0.1:{server.port}/v1/sandboxes/{sid}/ports/{port}/"
            headers = {"X-API-Key": API_KEY, **({"Host": host} if host else {})}
            with pytest.raises(InvalidStatus) as refusal:
                async with websockets.connect(url, additional_headers=headers):
                    pass
            return refusal.value.response.status_code

        assert asyncio.run(refused()) == 403  # closed before the handshake: not a 500
    healthy(client, server)


HEADER_NAME = st.text(st.sampled_from("abcxyz-_:;, \x7f\x01é"), min_size=0, max_size=12)
HEADER_VALUE = st.text(st.sampled_from('ab =;,"\t\r\n\x00é'), max_size=20)


def test_fuzzed_preview_requests_and_answers_never_break_the_server(
    client: httpx.Client, server: Server, app: tuple[str, str]
) -> None:
    """The app answers with the status and raw header lines the request asks for;
    the caller's method, path, query and headers vary too, on both forms."""
    sid, _ = app

    @given(
        status=st.integers(0, 1200),
        lines=st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=4),
        method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        path=st.text(st.sampled_from("ab/%?#.;=&é~"), max_size=16),
        port=st.integers(-1, 70000),
        own_host=st.booleans(),
        cookie=st.text(st.sampled_from("ab=; execbox_preview"), max_size=30),
    )
    @example(999, [], "GET", "", APP_PORT, False, "")  # once an empty reply
    @example(200, [], "GET", "", 99999, True, "")
    @example(304, [], "PATCH", "", APP_PORT, True, "")  # announced a body it cannot have
    @example(200, [("a", "b"), (" \x01\x7f", "")], "GET", "", APP_PORT, False, "")  # folded
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # bounded: no shrinking
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    def check(
        status: int,
        lines: list[tuple[str, str]],
        method: str,
        path: str,
        port: int,
        own_host: bool,
        cookie: str,
    ) -> None:
        port = APP_PORT if port % 3 else port  # mostly the app, sometimes any port
        raw = [f"{n}: {v}".encode().hex() for n, v in lines]
        query = httpx.QueryParams([("status", str(status)), *(("line", h) for h in raw)])
        headers = {"Cookie": cookie.strip()} if cookie.strip() else {}
        if own_host:
            headers["Host"] = f"{port}-{sid}.preview.localhost"
            url = "/" + path.lstrip("/")  # not "//…", which a client reads as a host
        else:
            url = f"/v1/sandboxes/{sid}/ports/{port}/{path}"
        answer = client.request(method, url, params=query, headers=headers, timeout=10)
        if answer.headers.get("content-type") == PROBLEM_MEDIA_TYPE:  # ours
            assert answer.status_code in (401, 404, 405, 422, 502, 504), answer.text
        elif answer.status_code >= 500:  # the app's own answer, relayed
            assert answer.text in ("fuzz", ""), answer.text

    check()
    healthy(client, server)
