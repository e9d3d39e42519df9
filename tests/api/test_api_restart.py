"""Restarts: jobs left running by a crash are re-queued (or failed after too many
attempts), queued jobs survive, and SIGTERM re-queues what cannot finish in the
grace period without being held up by open SSE streams."""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator

import httpx
import pytest

from kit.servers import Server, sse_events, submit, wait_for_status

SLOW = "import time\nprint('started', flush=True)\ntime.sleep(1.5)\nprint('done')"


@pytest.fixture
def server(backend: dict[str, str]) -> Iterator[Server]:
    server = Server({**backend, "EXECBOX_WORKERS": "1", "EXECBOX_MAX_ATTEMPTS": "2"})
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.stop(signal.SIGKILL)
        shutil.rmtree(server.data_dir, ignore_errors=True)


def _wait_started(client: httpx.Client, job_id: str) -> None:
    with client.stream("GET", f"/v1/executions/{job_id}/events") as stream:
        for event in sse_events(stream):
            if event["event"] == "stdout":
                return


def _statuses(client: httpx.Client, job_id: str) -> list[tuple[str, str | None]]:
    events = client.get(f"/v1/executions/{job_id}/activity").json()["events"]
    return [(e["status"], e.get("reason")) for e in events if e["type"] == "status"]


def test_crash_requeues_running_jobs_then_gives_up(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        running = submit(client, SLOW)
        queued = submit(client, "print('queued')")  # one worker: waits behind the first
        _wait_started(client, running)
        server.stop(signal.SIGKILL)

        server.start()
        assert wait_for_status(client, running, "completed")["run"]["stdout"] == "started\ndone\n"
        assert wait_for_status(client, queued, "completed")["run"]["stdout"] == "queued\n"
        assert _statuses(client, running) == [
            ("queued", None), ("running", None), ("queued", "the server restarted"),
            ("running", None), ("completed", None),
        ]  # fmt: skip

        # Killed on its second start too: with EXECBOX_MAX_ATTEMPTS=2 it is given up.
        doomed = submit(client, SLOW)
        for _ in range(2):
            _wait_started(client, doomed)
            server.stop(signal.SIGKILL)
            server.start()
        failed = wait_for_status(client, doomed, "failed")
        assert failed["status"] == "failed"
        assert "stopped 2 times" in failed["error"]["message"]
        debug_id = failed["error"]["debug_id"]
        assert any(r.get("debug_id") == debug_id for r in server.log_records())


def test_sigterm_requeues_unfinished_jobs_and_does_not_wait_for_streams(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        job_id = submit(client, "import time\nprint('started', flush=True)\ntime.sleep(30)")
        _wait_started(client, job_id)
        stream_ended = threading.Event()

        def follow() -> None:  # an SSE client that stays connected
            try:
                with httpx.stream("GET", f"{server.url}/v1/executions/{job_id}/events") as r:
                    for _ in sse_events(r):
                        pass
            except httpx.HTTPError:
                pass
            stream_ended.set()

        threading.Thread(target=follow, daemon=True).start()
        # Grace is 2 s, the job would take 30. (uvicorn re-raises the signal once it has
        # shut down cleanly; the re-queue checked below shows the shutdown was graceful.)
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert stream_ended.wait(30)

        server.start()
        job = wait_for_status(client, job_id, "running")
        assert job["status"] == "running"
        assert ("queued", "the server shut down") in _statuses(client, job_id)
        client.post(f"/v1/executions/{job_id}/cancel")
