"""The SDK, sync and async, against a real server with API keys on."""

from __future__ import annotations

import pytest

from execbox.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OutputEvent,
    ResultEvent,
    StatusEvent,
    TransportError,
)
from execbox.models import Limits, Status, Verdict
from kit.servers import API_KEY, Server

ASK = """
name = input("name? ")
print(f"hello, {name}")
"""


def test_run_returns_a_typed_result(client: Client) -> None:
    result = client.run("python", "print(6 * 7)")
    assert result.status == Status.COMPLETED and result.verdict == Verdict.OK
    assert result.run is not None and result.run.stdout == "42\n"
    assert result.language.name == "python" and result.language.version


def test_run_with_files_tests_and_limits(client: Client) -> None:
    result = client.run(
        "python",
        files=[
            {"path": "main.py", "content": "import helper\nprint(helper.double(input()))"},
            {"path": "helper.py", "content": "def double(x):\n    return int(x) * 2"},
        ],
        tests=[{"stdin": "2", "expected_output": "4"}, {"stdin": "3", "expected_output": "7"}],
        limits=Limits(wall_time_s=5),
    )
    assert result.verdict == Verdict.WRONG_ANSWER
    assert result.tests is not None and [t.passed for t in result.tests] == [True, False]


def test_a_crash_is_a_verdict_not_an_error(client: Client) -> None:
    result = client.run("python", "raise SystemExit(3)")
    assert result.verdict == Verdict.RUNTIME_ERROR and result.run and result.run.exit_code == 3


def test_submit_then_events_then_wait(client: Client) -> None:
    job = client.submit("python", "print('a')\nprint('b')")
    assert job.id and job.status in ("queued", "running", "completed")
    events = list(job.events())
    assert isinstance(events[0], StatusEvent) and events[0].status == Status.QUEUED
    assert "".join(e.text for e in events if isinstance(e, OutputEvent)) == "a\nb\n"
    assert isinstance(events[-1], ResultEvent) and events[-1].result.verdict == Verdict.OK
    # Resuming after an event replays only what came after it.
    assert [e.seq for e in job.events(after=events[-2].seq or 0)] == [events[-1].seq]
    assert job.wait().verdict == Verdict.OK
    assert job.refresh().status == Status.COMPLETED


def test_cancel_a_running_job(client: Client) -> None:
    job = client.submit("python", "import time\nprint('up', flush=True)\ntime.sleep(30)")
    for event in job.events():
        if isinstance(event, OutputEvent):
            break
    assert job.cancel().status == Status.CANCELLED
    assert job.wait().status == Status.CANCELLED
    finished = client.submit("python", "print(1)")
    finished.wait()
    with pytest.raises(ConflictError) as conflict:
        finished.cancel()
    assert conflict.value.status == 409 and conflict.value.detail


def test_interactive(client: Client) -> None:
    with client.interactive("python", ASK) as run:
        for event in run:
            if isinstance(event, OutputEvent) and "name?" in event.text:
                run.send("Ada\n")
    assert run.id and run.result is not None
    assert run.result.verdict == Verdict.OK and run.result.run
    assert run.result.run.stdout == "name? hello, Ada\n"


def test_languages(client: Client) -> None:
    python = next(info for info in client.languages() if info.name == "python")
    assert python.version and "py" in python.aliases


def test_errors_are_typed_and_carry_the_problem(client: Client, server: Server) -> None:
    with pytest.raises(InvalidRequestError) as invalid:
        client.run("cobol", "DISPLAY 'x'")
    assert invalid.value.status == 422 and "unknown language" in invalid.value.problem["detail"]
    with pytest.raises(NotFoundError):
        client.get("0" * 32)
    with pytest.raises(ValueError):
        client.run("python")  # neither code nor files: caught before sending
    with Client(server.url, api_key="wrong") as stranger:
        with pytest.raises(AuthenticationError):
            stranger.languages()
        with pytest.raises(AuthenticationError), stranger.interactive("python", "1") as run:
            run.wait()
    with Client("http://127.0.0.1:1") as nowhere, pytest.raises(TransportError):
        nowhere.languages()


def test_server_and_key_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECBOX_SERVER", server.url)
    monkeypatch.setenv("EXECBOX_API_KEY", API_KEY)
    with Client() as client:
        assert client.run("bash", "echo hi").verdict == Verdict.OK


async def test_async_client(server: Server) -> None:
    async with AsyncClient(server.url, api_key=API_KEY) as client:
        result = await client.run("python", "print('async')")
        assert result.run and result.run.stdout == "async\n"

        job = await client.submit("python", "print('x')")
        kinds = [type(event).__name__ async for event in job.events()]
        assert kinds[0] == "StatusEvent" and kinds[-1] == "ResultEvent"
        assert "OutputEvent" in kinds
        assert (await job.wait()).verdict == Verdict.OK
        assert (await job.refresh()).status == Status.COMPLETED
        assert any(info.name == "python" for info in await client.languages())

        async with client.interactive("python", ASK) as run:
            async for event in run:
                if isinstance(event, OutputEvent) and "name?" in event.text:
                    await run.send("Bob\n")
        assert run.result and run.result.run and run.result.run.stdout == "name? hello, Bob\n"

        async with client.interactive("python", "import time\nwhile True: time.sleep(1)") as run:
            await run.kill()
            assert (await run.wait()).status == Status.CANCELLED

        with pytest.raises(NotFoundError):
            await client.get("0" * 32)
