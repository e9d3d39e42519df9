"""Persistent sandboxes through a real server: lifecycle, files, commands, preview,
builds, hostile programs, expiry and a restart. No timed asserts: waits poll until
a state is reached (pytest-timeout guards against a hang)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from kit.host import env_uids
from kit.servers import API_KEY, Server, sse_events

APPS = Path(__file__).resolve().parent / "apps"
WEB_APP = """\
import http.server, os
MESSAGE = open("message.txt").read().strip()
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{MESSAGE} at {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
port = int(os.environ.get("PORT", "3000"))
http.server.ThreadingHTTPServer(("0.0.0.0", port), Page).serve_forever()
"""
CHECK = "import sys; sys.exit(0 if open('message.txt').read().strip() else 'message.txt is empty')"


def wait_until(probe: Callable[[], Any], pause: float = 0.05) -> Any:
    """Polls until probe() returns something truthy (pytest-timeout ends a hang)."""
    while not (value := probe()):
        time.sleep(pause)
    return value


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sandboxes", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def run(client: httpx.Client, sid: str, cmd: list[str] | str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": cmd, **body})
    assert response.status_code in (200, 202), response.text
    return response.json()


def sandbox_processes(server: Server, command: str) -> list[int]:
    """Host pids of ``command`` running as one of the server's sandbox uids (not zombies)."""
    uids = env_uids(server.env)
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if (
            fields.get("Name") == command
            and int(fields.get("Uid", "-1").split()[0]) in uids
            and not fields.get("State", "").startswith("Z")
        ):
            pids.append(int(entry.name))
    return pids


def workspace_holding(server: Server, marker: str) -> Path | None:
    """The mounted workspace (on the host) that holds the file ``marker``."""
    root = server.env["EXECBOX_RUNTIME_DIR"]
    for line in Path("/proc/mounts").read_text().splitlines():
        mount = Path(line.split()[1])
        if str(mount).startswith(root) and (mount / marker).exists():
            return mount
    return None


def build(client: httpx.Client, sid: str, **body: Any) -> dict[str, Any]:
    """Submits a build and follows its events to the end; returns the final record."""
    response = client.post(f"/v1/sandboxes/{sid}/builds", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    bid = response.json()["id"]
    with client.stream("GET", f"/v1/sandboxes/{sid}/builds/{bid}/events") as stream:
        records = [e["data"] for e in sse_events(stream) if e["event"] == "build"]
    assert [r["status"] for r in records][-1] in ("ready", "failed")
    final = client.get(f"/v1/sandboxes/{sid}/builds/{bid}").json()
    assert final == records[-1]
    return final


def test_lifecycle_metadata_and_timeout(client: httpx.Client) -> None:
    mine = create(client, metadata={"owner": "alice"}, timeout_s=60)
    create(client, metadata={"owner": "bob"})
    assert mine["status"] == "running" and mine["limits"]["memory_mb"] > 0
    listed = client.get("/v1/sandboxes", params={"metadata.owner": "alice"}).json()
    assert [s["id"] for s in listed] == [mine["id"]]
    extended = client.post(f"/v1/sandboxes/{mine['id']}/timeout", json={"timeout_s": 600})
    assert extended.json()["expires_at"] > mine["expires_at"]
    too_long = client.post(f"/v1/sandboxes/{mine['id']}/timeout", json={"timeout_s": 1e9})
    assert too_long.status_code == 422 and "at most" in too_long.json()["detail"]
    # Reconnect from another client, by id.
    with httpx.Client(base_url=str(client.base_url), headers={"X-API-Key": API_KEY}) as other:
        assert other.get(f"/v1/sandboxes/{mine['id']}").json()["status"] == "running"
    assert client.delete(f"/v1/sandboxes/{mine['id']}").json()["status"] == "killed"
    gone = client.get(f"/v1/sandboxes/{mine['id']}/files")
    assert gone.status_code == 410 and gone.json()["sandbox"]["end_reason"] == "deleted"
    assert client.get("/v1/sandboxes/nope").status_code == 404
    too_big = client.post("/v1/sandboxes", json={"limits": {"memory_mb": 1 << 20}})
    assert too_big.status_code == 422 and "limits.memory_mb may be at most" in too_big.text


def test_disk_quota_covers_all_processes_and_the_api(client: httpx.Client) -> None:
    sid = create(client, limits={"disk_mb": 2})["id"]
    # Two processes at once cannot together pass the workspace's size.
    full = run(client, sid, "head -c 1500000 /dev/zero > a & head -c 1500000 /dev/zero > b; wait")
    assert "No space left" in full["result"]["stderr"]
    sent = client.put(f"/v1/sandboxes/{sid}/files/c", content=b"x" * 900_000)
    assert sent.status_code == 507 and "workspace is full" in sent.json()["detail"]
    run(client, sid, "rm -f a b")
    assert client.put(f"/v1/sandboxes/{sid}/files/c", content=b"x" * 900_000).status_code == 201


def test_live_sandbox_cap_is_a_clear_429(client: httpx.Client) -> None:
    statuses = [client.post("/v1/sandboxes", json={}) for _ in range(5)]
    refused = statuses[-1]
    assert [r.status_code for r in statuses[:4]] == [201] * 4
    assert refused.status_code == 429 and "at most 4 sandboxes" in refused.json()["detail"]
    assert refused.headers["content-type"] == "application/problem+json"


def test_files_are_binary_safe_capped_and_confined(client: httpx.Client) -> None:
    sid = create(client)["id"]
    blob = bytes(range(256)) * 64
    assert client.put(f"/v1/sandboxes/{sid}/files/data/blob.bin", content=blob).status_code == 201
    assert client.get(f"/v1/sandboxes/{sid}/files/data/blob.bin").content == blob
    [entry] = client.get(f"/v1/sandboxes/{sid}/files", params={"path": "data"}).json()
    assert (entry["path"], entry["type"], entry["size"]) == ("data/blob.bin", "file", len(blob))
    seen = run(client, sid, "sha256sum data/blob.bin")["result"]["stdout"]
    assert seen.split()[0] == hashlib.sha256(blob).hexdigest()
    big = client.put(f"/v1/sandboxes/{sid}/files/big", content=b"x" * (2 << 20))
    assert big.status_code == 413
    assert client.get(f"/v1/sandboxes/{sid}/files/big").status_code == 404  # nothing half-written
    # Escapes: '..', absolute paths, and symlinks planted inside pointing outside.
    run(client, sid, "ln -s /etc/passwd passwd; ln -s / root; ln -s /etc etc")
    refused = {
        "get ..": client.get(f"/v1/sandboxes/{sid}/files/%2e%2e/%2e%2e/etc/passwd"),
        "get abs": client.get(f"/v1/sandboxes/{sid}/files//etc/passwd"),
        "get link": client.get(f"/v1/sandboxes/{sid}/files/passwd"),
        "get via dir link": client.get(f"/v1/sandboxes/{sid}/files/root/etc/passwd"),
        "put via dir link": client.put(f"/v1/sandboxes/{sid}/files/etc/pwned", content=b"x"),
        "put over link": client.put(f"/v1/sandboxes/{sid}/files/passwd", content=b"x"),
        "list via link": client.get(f"/v1/sandboxes/{sid}/files", params={"path": "root"}),
        "delete ..": client.delete(f"/v1/sandboxes/{sid}/files/%2e%2e/x"),
    }
    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 400)
    assert not Path("/etc/pwned").exists()
    assert client.delete(f"/v1/sandboxes/{sid}/files/passwd").status_code == 204
    assert os.path.exists("/etc/passwd")  # the link went, not its target
    assert client.delete(f"/v1/sandboxes/{sid}/files/data").status_code == 204
    assert client.get(f"/v1/sandboxes/{sid}/files/data/blob.bin").status_code == 404


def test_commands_foreground_background_stdin_kill_timeout(client: httpx.Client) -> None:
    sid = create(client)["id"]
    done = run(client, sid, ["/bin/sh", "-c", "cat; echo oops >&2; exit 3"], stdin="in\n")
    result = done["result"]
    assert done["status"] == "finished"
    assert (result["stdout"], result["stderr"], result["exit_code"]) == ("in\n", "oops\n", 3)
    assert result["verdict"] == "runtime_error"
    # A timed-out command is killed, with what it started (E2B #500).
    late = run(client, sid, "sleep 300 & sleep 300", timeout_s=0.3)["result"]
    assert late["verdict"] == "time_limit"
    count = run(client, sid, "ps -e -o comm= | grep -c sleep || true")["result"]["stdout"]
    assert count == "0\n"
    # Background: the id at once, logs replayable from the start and after an id.
    started = client.post(
        f"/v1/sandboxes/{sid}/commands",
        json={"cmd": "while read line; do echo got $line; done; echo bye", "background": True},
    )
    assert started.status_code == 202 and started.json()["status"] == "running"
    cid = started.json()["id"]
    for word in ("a", "b"):
        sent = client.post(f"/v1/sandboxes/{sid}/commands/{cid}/stdin", json={"data": word + "\n"})
        assert sent.status_code == 204
    client.post(f"/v1/sandboxes/{sid}/commands/{cid}/stdin", json={"close": True})
    with client.stream("GET", f"/v1/sandboxes/{sid}/commands/{cid}/events") as stream:
        events = list(sse_events(stream))
    output = "".join(e["data"]["data"] for e in events if e["event"] == "stdout")
    assert output == "got a\ngot b\nbye\n"
    assert events[-1]["event"] == "exit" and events[-1]["data"]["result"]["exit_code"] == 0
    headers = {"Last-Event-ID": events[0]["id"]}
    with client.stream(
        "GET", f"/v1/sandboxes/{sid}/commands/{cid}/events", headers=headers
    ) as stream:
        assert list(sse_events(stream)) == events[1:]
    server = run(client, sid, "sleep 600", background=True)
    killed = client.delete(f"/v1/sandboxes/{sid}/commands/{server['id']}").json()
    assert killed["status"] == "finished" and killed["result"]["signal"] == 9
    listed = [c["id"] for c in client.get(f"/v1/sandboxes/{sid}/commands").json()]
    assert cid in listed and server["id"] in listed


def test_running_commands_are_capped_per_sandbox(client: httpx.Client) -> None:
    sid = create(client)["id"]
    started = [run(client, sid, "exec sleep 600", background=True) for _ in range(6)]
    refused = client.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true"})
    assert refused.status_code == 429 and "wait for one to end" in refused.json()["detail"]
    client.delete(f"/v1/sandboxes/{sid}/commands/{started[0]['id']}")
    assert run(client, sid, "echo room")["result"]["stdout"] == "room\n"


def test_preview_http_and_websocket(client: httpx.Client) -> None:
    sid = create(client)["id"]
    client.put(f"/v1/sandboxes/{sid}/files/app.py", content=WEB_APP.encode())
    client.put(f"/v1/sandboxes/{sid}/files/message.txt", content=b"hello")
    client.put(f"/v1/sandboxes/{sid}/files/ws.py", content=(APPS / "ws_echo.py").read_bytes())
    run(client, sid, "PORT=3000 exec python3 app.py", background=True)
    run(client, sid, ["python3", "ws.py", "4000"], background=True)
    url = f"/v1/sandboxes/{sid}/ports/3000/some/page?q=1"
    page = wait_until(lambda: (r := client.get(url)).status_code == 200 and r)
    assert page.text == "hello at /some/page?q=1"
    missing = client.get(f"/v1/sandboxes/{sid}/ports/3999/")
    assert missing.status_code == 502 and "nothing listens on port 3999" in missing.json()["detail"]

    async def echo() -> str:
        ws_url = str(client.base_url).rstrip("/").replace("http", "ws", 1)
        url = f"{ws_url}/v1/sandboxes/{sid}/ports/4000/"
        async with websockets.connect(url, additional_headers={"X-API-Key": API_KEY}) as ws:
            await ws.send("ping")
            return str(await ws.recv())

    assert asyncio.run(echo()) == "echo: ping"


def test_browsers_open_previews_with_the_preview_token(
    client: httpx.Client, server: Server
) -> None:
    created = create(client)
    sid, token = created["id"], created["preview_token"]
    echo_headers = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = (self.path + ' ' + str(self.headers.get('cookie'))).encode()\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer(('127.0.0.1', 3000), H).serve_forever()\n"
    )
    client.put(f"/v1/sandboxes/{sid}/files/h.py", content=echo_headers.encode())
    run(client, sid, "exec python3 h.py", background=True)
    path = f"/v1/sandboxes/{sid}/ports/3000/page"
    wait_until(lambda: client.get(path).status_code == 200)
    with httpx.Client(base_url=server.url) as browser:  # no API key
        assert browser.get(path).status_code == 401
        assert browser.get(path, params={"execbox_preview_token": "wrong"}).status_code == 401
        first = browser.get(path, params={"execbox_preview_token": token, "q": "1"})
        # The app sees neither the token nor execbox's cookie.
        assert first.status_code == 200 and first.text == "/page?q=1 None"
        assert "execbox_preview" in first.headers["set-cookie"]
        browser.cookies.set("app", "x", path="/")
        # The cookie carries the token; on execbox's origin no cookie reaches the app.
        assert browser.get(path).text == "/page None"
        other = create(client)["id"]
        assert browser.get(f"/v1/sandboxes/{other}/ports/3000/").status_code == 401


def test_builds_replace_the_app_and_fail_clearly(client: httpx.Client, server: Server) -> None:
    sid = create(client)["id"]
    files = [{"path": "app.py", "content": WEB_APP}, {"path": "check.py", "content": CHECK}]
    spec = {"check": "python3 check.py", "start": {"cmd": ["python3", "app.py"], "port": 3000}}
    v1 = build(client, sid, files=[*files, {"path": "message.txt", "content": "v1"}], **spec)
    assert (v1["status"], v1["build_version"]) == ("ready", 1), v1
    assert [s["name"] for s in v1["steps"]] == ["scaffold", "checks", "starting"]
    assert all(s["status"] == "ok" and s["finished_at"] for s in v1["steps"])
    assert client.get(v1["preview_url"] + "x").text == "v1 at /x"
    v2 = build(client, sid, files=[{"path": "message.txt", "content": "v2"}], **spec)
    assert (v2["status"], v2["build_version"]) == ("ready", 2)
    assert client.get(v2["preview_url"] + "x").text == "v2 at /x"
    assert client.get(f"/v1/sandboxes/{sid}").json()["build_version"] == 2
    # A failing check: the step, its output, words, and a debug id in the server log.
    v3 = build(client, sid, files=[{"path": "message.txt", "content": ""}], **spec)
    assert (v3["status"], v3["build_version"]) == ("failed", 3)
    error = v3["error"]
    assert error["step"] == "checks" and "the check failed" in error["message"]
    assert "message.txt is empty" in error["output_tail"]
    assert any(r.get("debug_id") == error["debug_id"] for r in server.log_records())
    assert client.get(v2["preview_url"] + "x").text == "v2 at /x"  # v2 still serves
    # An app that never listens fails in the starting step.
    v4 = build(client, sid, start={"cmd": "echo crashing; exit 7", "port": 3001})
    assert v4["error"]["step"] == "starting" and "exit code 7" in v4["error"]["message"]
    assert "crashing" in v4["error"]["output_tail"]
    # Without network, a dependency download fails and says why.
    fetch = "import urllib.request as u; u.urlopen('http://pypi.org')"
    v5 = build(client, sid, install=["python3", "-c", fetch])
    assert v5["error"]["step"] == "deps" and "no network" in v5["error"]["message"]


def test_a_build_whose_sandbox_ends_fails_saying_so(client: httpx.Client) -> None:
    sid = create(client)["id"]
    started = client.post(f"/v1/sandboxes/{sid}/builds", json={"check": "sleep 60"}).json()
    path = f"/v1/sandboxes/{sid}/builds/{started['id']}"
    wait_until(lambda: client.get(path).json()["status"] == "checks")
    client.delete(f"/v1/sandboxes/{sid}")
    failed = wait_until(lambda: (b := client.get(path).json())["status"] == "failed" and b)
    assert failed["error"]["step"] == "checks"
    assert "the sandbox stopped during the build" in failed["error"]["message"]


def test_networked_deps_run_beside_the_sandbox(client: httpx.Client) -> None:
    # network: true gives the deps step a one-shot box with network over the same
    # workspace; the sandbox's own commands still have none.
    sid = create(client, network=True)["id"]
    probe = "import socket; print(len(socket.if_nameindex()))"
    done = build(
        client, sid, install=["python3", "-c", f"{probe}; open('deps.txt', 'w').write('ok')"]
    )
    assert done["status"] == "ready", done
    assert [s["name"] for s in done["steps"]] == ["scaffold", "deps"]
    interfaces = int(done["steps"][1]["output_tail"])
    assert run(client, sid, "cat deps.txt")["result"]["stdout"] == "ok"
    inside = run(client, sid, ["python3", "-c", probe])["result"]["stdout"]
    assert int(inside) == 1 < interfaces  # only its own loopback


PROBE = """\
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=3).close()
    print("connected")
except OSError as exc:
    print("refused", type(exc).__name__)
"""


def test_hostile_sandbox_reaches_nothing_outside(client: httpx.Client, server: Server) -> None:
    victim = create(client)["id"]
    attacker = create(client)["id"]
    run(client, victim, "exec python3 -m http.server 5000", background=True)
    wait_until(lambda: client.get(f"/v1/sandboxes/{victim}/ports/5000/").status_code == 200)
    client.put(f"/v1/sandboxes/{attacker}/files/probe.py", content=PROBE.encode())
    targets = {
        "the host's server": ("127.0.0.1", str(server.port)),
        "the internet": ("1.1.1.1", "53"),
        "another sandbox": ("127.0.0.1", "5000"),
        "a host interface": ("10.0.0.1", "22"),
    }
    for name, (host, port) in targets.items():
        out = run(client, attacker, ["python3", "probe.py", host, port])["result"]["stdout"]
        assert out.startswith("refused"), (name, out)
    # Nor can it see or signal the other sandbox's processes.
    seen = run(client, attacker, "ps -e -o comm=")["result"]["stdout"]
    assert "python3" not in seen
    assert client.get(f"/v1/sandboxes/{victim}/ports/5000/").status_code == 200


def test_expiry_frees_processes_and_disk(client: httpx.Client, server: Server) -> None:
    sid = create(client, timeout_s=120)["id"]
    run(client, sid, "sleep 600 & setsid sleep 600 & exec sleep 600", background=True)
    client.put(f"/v1/sandboxes/{sid}/files/expiry-marker", content=b"x" * (1 << 20))
    workspace = workspace_holding(server, "expiry-marker")
    assert workspace is not None
    wait_until(lambda: len(sandbox_processes(server, "sleep")) == 3)  # the shell started them all
    client.post(f"/v1/sandboxes/{sid}/timeout", json={"timeout_s": 0.2})  # now it may expire
    expired = wait_until(
        lambda: (s := client.get(f"/v1/sandboxes/{sid}").json())["status"] != "running" and s
    )
    assert expired["status"] == "expired" and expired["end_reason"] == "its timeout passed"
    # Killed and unmounted before the end was recorded.
    assert sandbox_processes(server, "sleep") == []
    assert workspace_holding(server, "expiry-marker") is None and not workspace.exists()
    assert client.get(f"/v1/sandboxes/{sid}/files/expiry-marker").status_code == 410


def test_after_a_crash_sandboxes_are_reported_lost(client: httpx.Client, server: Server) -> None:
    sid = create(client, metadata={"case": "restart"})["id"]
    run(client, sid, "exec sleep 600", background=True)
    client.put(f"/v1/sandboxes/{sid}/files/crash-marker", content=b"x")
    server.stop(signal.SIGKILL)  # no goodbye: the records still say running
    server.start()
    info = client.get(f"/v1/sandboxes/{sid}").json()
    assert info["status"] == "lost" and info["end_reason"] == "the server restarted"
    gone = client.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true"})
    assert gone.status_code == 410 and "lost" in gone.json()["detail"]
    # Its processes died with the server (bwrap --die-with-parent), and the new server
    # swept the workspace the old one left mounted.
    wait_until(lambda: not sandbox_processes(server, "sleep"))
    assert workspace_holding(server, "crash-marker") is None
