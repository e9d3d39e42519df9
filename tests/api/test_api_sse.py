"""Server-Sent Events: live, replayed, resumed."""

from __future__ import annotations

from typing import Any

import httpx

from kit.servers import sse_events, submit

PROGRAM = """
import sys, time
for i in range(5):
    print(f"out {i}", flush=True)
    print(f"err {i}", file=sys.stderr, flush=True)
    time.sleep(0.05)
"""


def _stream(client: httpx.Client, job_id: str, **headers: str) -> list[dict[str, Any]]:
    with client.stream("GET", f"/v1/executions/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


def _text(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["data"]["data"] for e in events if e["event"] == kind)


def test_live_stream_then_replay_then_resume(client: httpx.Client) -> None:
    job_id = submit(client, PROGRAM)
    live = _stream(client, job_id)

    kinds = [e["event"] for e in live]
    assert kinds[-2:] == ["status", "result"]
    assert set(kinds) == {"status", "stdout", "stderr", "result"}
    statuses = [e["data"]["status"] for e in live if e["event"] == "status"]
    assert statuses == ["queued", "running", "completed"]
    assert _text(live, "stdout") == "".join(f"out {i}\n" for i in range(5))
    assert _text(live, "stderr") == "".join(f"err {i}\n" for i in range(5))
    ids = [int(e["id"]) for e in live]
    assert ids == sorted(set(ids))
    result = live[-1]["data"]
    assert result["id"] == job_id and result["run"]["stdout"] == _text(live, "stdout")

    # A finished job replays the same stream from the start.
    assert _stream(client, job_id) == live

    # Last-Event-ID resumes after that event.
    middle = live[len(live) // 2]
    assert _stream(client, job_id, **{"Last-Event-ID": middle["id"]}) == [
        e for e in live if int(e["id"]) > int(middle["id"])
    ]


def test_unknown_job_has_no_stream(client: httpx.Client) -> None:
    response = client.get("/v1/executions/0123abcd/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
