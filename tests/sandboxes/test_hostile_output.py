"""Hostile output of persistent sandboxes, through the API of a real server.

A build's app that writes without end (`yes`, `cat /dev/zero`) and many background
commands that write one byte at a time must not grow the server's memory without
bound, must not stall its other requests, and must leave nothing behind once the
sandbox is deleted; followers still get the output, with `dropped` where it was cut.
Each attack is stopped early when the server's memory passes the bound, so that a
regression fails in a moment instead of eating the host.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from execbox.sandboxes.eventlog import EVENT_OVERHEAD
from execbox.sandboxes.service import FINISHED_LOG_BYTES
from kit.servers import Server, sse_events

ATTACK_S = 3.0
SAMPLE_S = 0.1
# The server's growth under attack: the logs of a sandbox are a few MiB; without
# bounds the server grew by hundreds of MB per second.
RSS_GROWTH_LIMIT = 150 << 20
HEALTH_LIMIT_S = 2.0  # a guard for /health during the attack, not a measurement
RELEASE_WAIT_S = 5.0
FOLLOWER_END_S = 10.0
WRITERS_PER_SANDBOX = 6  # the server fixture's EXECBOX_SANDBOX_MAX_COMMANDS
ONE_BYTE_WRITER = "dd if=/dev/zero bs=1 status=none"  # a write(2) per byte


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class Attack:
    baseline: int
    peak_growth: int = 0
    slowest_health_s: float = 0.0

    def watch(self, server: Server, client: httpx.Client) -> None:
        """Samples the server's memory and /health for ATTACK_S, or until the memory
        passes the bound."""
        assert server.proc is not None
        deadline = time.monotonic() + ATTACK_S
        while time.monotonic() < deadline and self.peak_growth <= RSS_GROWTH_LIMIT:
            started = time.monotonic()
            with contextlib.suppress(httpx.TimeoutException):
                client.get("/health", timeout=HEALTH_LIMIT_S * 3).raise_for_status()
            self.slowest_health_s = max(self.slowest_health_s, time.monotonic() - started)
            growth = rss_bytes(server.proc.pid) - self.baseline
            self.peak_growth = max(self.peak_growth, growth)
            time.sleep(SAMPLE_S)

    def check(self) -> None:
        assert self.peak_growth <= RSS_GROWTH_LIMIT, (
            f"the server grew by {self.peak_growth >> 20} MiB under the attack"
        )
        assert self.slowest_health_s < HEALTH_LIMIT_S, (
            f"/health took {self.slowest_health_s:.1f} s under the attack"
        )


def start_attack(server: Server) -> Attack:
    assert server.proc is not None
    return Attack(baseline=rss_bytes(server.proc.pid))


def new_sandbox(client: httpx.Client) -> str:
    response = client.post("/v1/sandboxes", json={})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def events_of(client: httpx.Client, path: str, count: int | None = None) -> list[dict[str, Any]]:
    """The events of an SSE stream replayed from its start: the first ``count``, or all
    of a finished one."""
    events: list[dict[str, Any]] = []
    with client.stream("GET", path, timeout=10) as stream:
        for event in sse_events(stream):
            events.append(event)
            if len(events) == count:
                break
    return events


def assert_replay_cut(events: list[dict[str, Any]], kinds: set[str]) -> None:
    """The replay starts with a `dropped` marker, then carries output again."""
    assert events[0]["event"] == "dropped", events[:2]
    assert_replay_exact(events)
    assert any(e["event"] in kinds and e["data"]["data"] for e in events[1:]), events


def assert_replay_exact(events: list[dict[str, Any]]) -> None:
    """Sequence numbers follow each other; a `dropped` marker stands for every gap."""
    expected = 1
    for event in events:
        if event["event"] == "dropped":
            assert event["data"]["events"] == int(event["id"]) - expected + 1, event
        else:
            assert int(event["id"]) == expected, (event["id"], expected)
        expected = int(event["id"]) + 1


def assert_released(
    server: Server, attack: Attack, client: httpx.Client, sandboxes: list[str]
) -> None:
    """Deleting the sandboxes gives back what their output held."""
    for sid in sandboxes:
        assert client.delete(f"/v1/sandboxes/{sid}").status_code == 200
    assert server.proc is not None
    deadline = time.monotonic() + RELEASE_WAIT_S
    while rss_bytes(server.proc.pid) - attack.baseline > RSS_GROWTH_LIMIT:
        assert time.monotonic() < deadline, "the server kept the memory of a deleted sandbox"
        time.sleep(SAMPLE_S)


class Follower(threading.Thread):
    """Follows an SSE stream to its end, counting the output it carries."""

    def __init__(self, client: httpx.Client, path: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.headers, self.path = client.base_url, client.headers, path
        self.output_bytes = 0

    def run(self) -> None:
        with (
            httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as client,
            client.stream("GET", self.path) as stream,
        ):
            for event in sse_events(stream):
                if event["event"] == "stdout":
                    self.output_bytes += len(event["data"]["data"])


@pytest.fixture
def hostile(client: httpx.Client, server: Server) -> Iterator[tuple[httpx.Client, Server]]:
    yield client, server
    assert client.get("/health", timeout=HEALTH_LIMIT_S * 3).status_code == 200


@pytest.mark.parametrize("app", ["yes", "cat /dev/zero"])
def test_endless_app_output_keeps_a_bounded_tail(
    hostile: tuple[httpx.Client, Server], app: str
) -> None:
    client, server = hostile
    sid = new_sandbox(client)
    attack = start_attack(server)
    start = {"cmd": app, "port": 8081}
    response = client.post(f"/v1/sandboxes/{sid}/builds", json={"start": start})
    assert response.status_code == 202, response.text
    build_id = response.json()["id"]
    try:
        attack.watch(server, client)
        attack.check()
        events = events_of(client, f"/v1/sandboxes/{sid}/builds/{build_id}/events", 4)
        assert_replay_cut(events, {"output"})
    finally:
        assert_released(server, attack, client, [sid])


def test_one_byte_writes_are_charged_and_coalesced(hostile: tuple[httpx.Client, Server]) -> None:
    client, server = hostile
    sandboxes = [new_sandbox(client) for _ in range(3)]  # 18 writers
    attack = start_attack(server)
    commands: list[str] = []
    for sid in sandboxes:
        for _ in range(WRITERS_PER_SANDBOX):
            response = client.post(
                f"/v1/sandboxes/{sid}/commands",
                json={"cmd": ONE_BYTE_WRITER, "background": True},
            )
            assert response.status_code == 202, response.text
            commands.append(f"/v1/sandboxes/{sid}/commands/{response.json()['id']}")
    # Followers take events as they come, so that they cannot be merged: the worst case.
    followers = [Follower(client, f"{path}/events") for path in commands[:WRITERS_PER_SANDBOX]]
    for follower in followers:
        follower.start()
    try:
        attack.watch(server, client)
        attack.check()
        for path in commands:
            assert client.delete(path).status_code == 200
        replays = [events_of(client, f"{path}/events") for path in commands]
    finally:
        assert_released(server, attack, client, sandboxes)
        for follower in followers:
            follower.join(FOLLOWER_END_S)
    assert all(f.output_bytes > 0 and not f.is_alive() for f in followers)
    # What a finished command keeps is counted with each event's overhead: tiny
    # events cannot pile up (a `dropped` marker and the exit come on top).
    most_events = FINISHED_LOG_BYTES // EVENT_OVERHEAD + 2
    for replay in replays:
        assert len(replay) <= most_events, f"{len(replay)} events kept from one-byte writes"
        assert replay[-1]["event"] == "exit"
        assert_replay_exact(replay)
    # Output nobody took yet was merged: the commands without followers hold large events.
    unfollowed = [e for r in replays[WRITERS_PER_SANDBOX:] for e in r if e["event"] == "stdout"]
    assert max(len(e["data"]["data"]) for e in unfollowed) > 1
