"""The executions API against a real server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx

from kit.servers import run, sse_events, submit, wait_for_status

PROBLEM = "application/problem+json"


def test_sync_execute_returns_the_result(client: httpx.Client) -> None:
    result = run(client, "print(1+1)")
    assert result["status"] == "completed"
    assert result["verdict"] == "ok"
    assert result["run"]["stdout"] == "2\n"
    assert result["run"]["exit_code"] == 0
    assert result["language"]["name"] == "python"
    assert result["language"]["version"]
    assert result["error"] is None
    assert result["created_at"] <= result["started_at"] <= result["finished_at"]
    assert client.get(f"/v1/executions/{result['id']}").json() == result


def test_program_failures_are_completed_jobs_with_verdicts(client: httpx.Client) -> None:
    compile_error = run(client, "int main() { return }", language="c")
    assert (compile_error["status"], compile_error["verdict"]) == ("completed", "compile_error")
    assert compile_error["compile"]["stderr"]
    assert compile_error["run"] is None

    crash = run(client, "raise SystemExit(3)")
    assert (crash["status"], crash["verdict"]) == ("completed", "runtime_error")
    assert crash["run"]["exit_code"] == 3

    timeout = run(client, "while True: pass", limits={"cpu_time_s": 0.5, "wall_time_s": 2})
    assert (timeout["status"], timeout["verdict"]) == ("completed", "time_limit")


def test_output_that_is_not_utf8_comes_back_intact(client: httpx.Client) -> None:
    result = run(client, "import sys; sys.stdout.buffer.write(b'\\xff\\xfe ok')")
    assert base64.b64decode(result["run"]["stdout_base64"]) == b"\xff\xfe ok"


def test_test_cases_are_judged(client: httpx.Client) -> None:
    result = run(
        client,
        "print(int(input()) * 2)",
        tests=[{"stdin": "2", "expected_output": "4"}, {"stdin": "3", "expected_output": "7"}],
    )
    assert result["verdict"] == "wrong_answer"
    assert [t["passed"] for t in result["tests"]] == [True, False]
    assert result["tests"][1]["stdout"] == "6\n"


def test_async_submit_answers_202_and_the_job_runs(client: httpx.Client) -> None:
    response = client.post(
        "/v1/executions", params={"wait": "false"}, json={"language": "py", "code": "print(7)"}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == f"/v1/executions/{body['id']}"
    # Persisted before the answer: readable at once.
    assert client.get(response.headers["location"]).status_code == 200
    finished = wait_for_status(client, body["id"], "completed")
    assert finished["run"]["stdout"] == "7\n"
    assert finished["language"]["name"] == "python"  # the alias resolved


def test_list_is_newest_first_paginated_and_filtered(client: httpx.Client) -> None:
    ids = [run(client, f"print({i})")["id"] for i in range(3)]
    first = client.get("/v1/executions", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    second = client.get("/v1/executions", params={"limit": 2, "cursor": first["next_cursor"]})
    assert second.json()["items"][0]["id"] == ids[0]
    completed = client.get("/v1/executions", params={"status": "completed", "limit": 100})
    assert {item["status"] for item in completed.json()["items"]} == {"completed"}
    bad = client.get("/v1/executions", params={"status": "done"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == PROBLEM


def test_invalid_requests_get_problems_that_say_what_to_fix(client: httpx.Client) -> None:
    cases = [
        ({"language": "cobol", "code": "x"}, "supported: "),
        ({"language": "python", "code": "x", "limits": {"cpu_time_s": 10_000}}, "cpu_time_s"),
        ({"language": "python", "code": "x", "limits": {"memory_mb": -1}}, "memory_mb"),
        ({"language": "python"}, "`code`"),
        ({"language": "python", "code": "x", "callback_url": "ftp://x/"}, "http"),
        ({"language": "python", "code": "x", "files": [{"path": "../a", "content": ""}]}, "a"),
    ]
    for body, hint in cases:
        response = client.post("/v1/executions", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["status"] == 422
        assert problem["title"] == "Unprocessable Entity"
        assert hint in problem["detail"], problem
    missing = client.get("/v1/executions/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM


def test_cancel_kills_a_running_job(client: httpx.Client) -> None:
    job_id = submit(client, "import time\nprint('started', flush=True)\ntime.sleep(60)")
    with client.stream("GET", f"/v1/executions/{job_id}/events") as stream:
        for event in sse_events(stream):
            if event["event"] == "stdout":
                break
    cancelled = client.post(f"/v1/executions/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"]
    assert client.get(f"/v1/executions/{job_id}").json()["status"] == "cancelled"
    assert client.post(f"/v1/executions/{job_id}/cancel").status_code == 200  # idempotent
    statuses = [
        e["status"] for e in client.get(f"/v1/executions/{job_id}/activity").json()["events"]
        if e["type"] == "status"
    ]  # fmt: skip
    assert statuses == ["queued", "running", "cancelled"]

    done = run(client, "print(1)")
    conflict = client.post(f"/v1/executions/{done['id']}/cancel")
    assert conflict.status_code == 409
    assert "completed" in conflict.json()["detail"]


def test_activity_logs_transitions_and_stages(client: httpx.Client) -> None:
    result = run(client, "print(1)", tests=[{"stdin": ""}, {"stdin": ""}])
    activity = client.get(f"/v1/executions/{result['id']}/activity").json()
    assert activity["status"] == "completed"
    entries = activity["events"]
    assert [e.get("status") or e.get("stage") for e in entries] == [
        "queued", "running", "test 1", "test 2", "completed",
    ]  # fmt: skip
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)


def test_concurrent_submissions_are_all_accepted_and_run(client: httpx.Client) -> None:
    def one(i: int) -> str:
        return submit(client, f"print({i})")

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one, range(32)))
    outputs = {wait_for_status(client, job_id, "completed")["run"]["stdout"] for job_id in ids}
    assert outputs == {f"{i}\n" for i in range(32)}
