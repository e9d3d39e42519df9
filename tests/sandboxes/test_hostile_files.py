"""The files API of persistent sandboxes against hostile workspaces and callers, through
a real server: a directory of 150,000 files is listed (paged) and removed without
stalling other requests, names that are not UTF-8 or too long get correct answers, a
64 MB upload streams past the JSON body cap, and a fuzzer finds no server error."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from execbox.api.problems import PROBLEM_MEDIA_TYPE
from execbox.client import AsyncClient, Client
from kit.servers import API_KEY, Server, make_server

FILES_UID = 60363  # this module's server's sandboxes, counted apart from the others'
MANY_FILES = 150_000
PROMPT_S = 0.5  # a request the loop serves at once; a guard against a blocked loop
FILE_MB = 64
BODY_KB = 1024  # the JSON body cap, far below the file cap
MAKE_MANY = f"""
import os
os.mkdir("many")
for i in range({MANY_FILES}):
    os.close(os.open(f"many/{{i:06d}}", os.O_CREAT | os.O_WRONLY, 0o644))
"""

FUZZ_WORKSPACE = """
import os
os.makedirs(b"dir/sub\\xfe")
for name in (b"\\xff", b"dir/\\xc3", b"dir/" + b"n" * 255):
    open(name, "w").write("x")
"""

SLEEPER = """python3 -c '
import os, subprocess
subprocess.Popen(["./sleeper", "30"])  # returns once the program runs
open("started", "w").close()
os.wait()'
"""

WRITER = """python3 -c '
import os
while True:  # keeps writing into busy/, whoever removes it
    try:
        os.makedirs("busy", exist_ok=True)
        for i in range(100):
            open(f"busy/{i}", "w").close()
    except OSError:
        pass'
"""


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    runtime_dir = Path(tempfile.mkdtemp(prefix="execbox-files-run-"))
    runtime_dir.chmod(0o711)
    try:
        yield from make_server(
            {
                "EXECBOX_SANDBOX_UID": str(FILES_UID),
                "EXECBOX_SANDBOX_GID": str(FILES_UID),
                "EXECBOX_CGROUP_NAME": f"execbox-files-{os.getpid()}",
                "EXECBOX_RUNTIME_DIR": str(runtime_dir),
                "EXECBOX_WARM_POOL_SIZE": "0",
                "EXECBOX_SANDBOX_WARM_POOL": "0",
                "EXECBOX_WORKERS": "1",
                "EXECBOX_MAX_SANDBOXES": "3",
                "EXECBOX_SANDBOX_FILE_MB": str(FILE_MB),
                "EXECBOX_MAX_BODY_KB": str(BODY_KB),
                "EXECBOX_API_KEYS": API_KEY,
            }
        )
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
        yield client
        for info in client.get("/v1/sandboxes", params={"status": "running"}).json():
            client.delete(f"/v1/sandboxes/{info['id']}")
        # Healthy, and nothing of the sandboxes is left: no process, no workspace mount.
        assert client.get("/health").status_code == 200
        wait_until(lambda: not sandbox_uid_processes())
        # Unmounted in the background once the sandbox's processes are gone.
        runtime = server.env["EXECBOX_RUNTIME_DIR"]
        wait_until(lambda: runtime not in Path("/proc/self/mountinfo").read_text())


def create(client: httpx.Client, **body: Any) -> str:
    response = client.post("/v1/sandboxes", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def run(client: httpx.Client, sid: str, code: str) -> str:
    response = client.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": ["python3", "-c", code]})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["exit_code"] == 0, result
    return result["stdout"]


def slowest_answer_while(client: httpx.Client, sid: str, work: Callable[[], Any]) -> float:
    """Runs ``work`` in a thread and, until it ends, asks for /health and the sandbox's
    record over and over: the slowest answer, in seconds."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(work()))
    worker.start()
    slowest = 0.0
    while worker.is_alive():
        for probe in ("/health", f"/v1/sandboxes/{sid}"):
            started = time.monotonic()
            assert client.get(probe, timeout=10).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
    worker.join()
    assert outcome, "the work failed"
    return slowest


def wait_until(probe: Callable[[], Any]) -> None:
    """Polls until probe() is truthy (pytest-timeout ends a hang)."""
    while not probe():
        time.sleep(0.05)


def sandbox_uid_processes() -> list[str]:
    """Host pids running as this module's sandbox uid."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "")
        if uid == str(FILES_UID):
            pids.append(entry.name)
    return pids


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_a_huge_directory_is_listed_in_pages_and_removed_off_the_event_loop(
    client: httpx.Client, server: Server
) -> None:
    # A workspace has 256 inodes per MiB: room for the files (the memory they take is
    # a few tens of MiB: empty files hold no data).
    sid = create(client, limits={"disk_mb": 640})
    run(client, sid, MAKE_MANY)
    files = f"/v1/sandboxes/{sid}/files"
    pages: list[httpx.Response] = []

    def list_two_pages() -> None:
        pages.append(client.get(files, params={"path": "many"}))
        cursor = pages[0].headers["x-next-cursor"]
        pages.append(client.get(files, params={"path": "many", "cursor": cursor}))

    assert slowest_answer_while(client, sid, list_two_pages) < PROMPT_S
    first, second = (page.json() for page in pages)
    assert [e["name"] for e in first + second] == [f"{i:06d}" for i in range(2000)]
    assert first[0] | {"mtime": None} == {
        "name": "000000",
        "path": "many/000000",
        "type": "file",
        "size": 0,
        "mtime": None,
        "name_base64": None,
        "path_base64": None,
    }
    # A page of `limit`, and the last page says nothing remains.
    last_two = client.get(files, params={"path": "many", "limit": 2, "cursor": "MTQ5OTk3"})
    assert [e["name"] for e in last_two.json()] == ["149998", "149999"]
    assert "x-next-cursor" not in last_two.headers
    assert client.get(files, params={"limit": 1001}).status_code == 422
    assert client.get(files, params={"cursor": "not base64!"}).status_code == 422

    removed = slowest_answer_while(client, sid, lambda: client.delete(f"{files}/many"))
    assert removed < PROMPT_S
    assert client.get(files, params={"path": "many"}).status_code == 404
    assert run(client, sid, "import os; print(os.listdir('.'))").strip() == "[]"


def test_the_sdk_lists_every_page(server: Server) -> None:
    with Client(server.url, api_key=API_KEY) as client:
        sandbox = client.sandboxes.create()
        try:
            sandbox.commands.run("mkdir d && cd d && seq -w 2500 | xargs touch")
            assert [e.name for e in sandbox.files.list("d")] == [f"{i:04d}" for i in range(1, 2501)]
        finally:
            sandbox.kill()

    async def list_async() -> list[str]:
        async with AsyncClient(server.url, api_key=API_KEY) as client:
            sandbox = await client.sandboxes.create()
            try:
                await sandbox.commands.run("mkdir d && cd d && seq -w 1001 | xargs touch")
                return [e.name for e in await sandbox.files.list("d")]
            finally:
                await sandbox.kill()

    assert asyncio.run(list_async()) == [f"{i:04d}" for i in range(1, 1002)]


def test_names_that_are_not_utf8_are_listed_and_addressed_losslessly(
    client: httpx.Client,
) -> None:
    sid = create(client)
    run(client, sid, "import os; open(b'\\xff', 'w').write('ff'); os.mkdir(b'd\\xfe')")
    files = f"/v1/sandboxes/{sid}/files"
    listing = client.get(files)
    assert listing.status_code == 200, listing.text
    by_bytes = {base64.b64decode(e["name_base64"] or "") or e["name"]: e for e in listing.json()}
    assert by_bytes[b"\xff"]["name"] == "\ufffd" and by_bytes[b"\xff"]["type"] == "file"
    assert by_bytes[b"d\xfe"]["path"] == "d\ufffd"
    assert client.get(f"{files}/%FF").content == b"ff"
    assert client.put(f"{files}/d%FE/%FD%FC", content=b"inner").status_code == 201
    [inner] = client.get(f"{files}?path=d%FE").json()
    assert base64.b64decode(inner["path_base64"]) == b"d\xfe/\xfd\xfc"
    seen = run(client, sid, "print(open(b'd\\xfe/\\xfd\\xfc').read())")
    assert seen == "inner\n"
    assert client.delete(f"{files}/%FF").status_code == 204
    assert client.get(f"{files}/%FF").status_code == 404


@pytest.mark.parametrize(
    ("name", "limit"),
    [
        ("a" * 300, "255 bytes"),
        ("é" * 128, "255 bytes"),  # 128 characters, 256 bytes
        ("/".join(["b" * 250] * 17), "4095 bytes"),
    ],
)
def test_overlong_names_are_refused_with_the_limit(
    client: httpx.Client, name: str, limit: str
) -> None:
    sid = create(client)
    files = f"/v1/sandboxes/{sid}/files"
    answers = [
        client.put(f"{files}/{name}", content=b"x"),
        client.get(f"{files}/{name}"),
        client.delete(f"{files}/{name}"),
        client.get(files, params={"path": name}),
    ]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert limit in answer.json()["detail"]
    assert client.put(f"{files}/{'é' * 127}", content=b"x").status_code == 201  # 254 bytes


def test_a_64_mb_upload_streams_within_the_caps(client: httpx.Client, server: Server) -> None:
    assert server.proc is not None
    sid = create(client)
    files = f"/v1/sandboxes/{sid}/files"
    block = os.urandom(1 << 20)
    digest = hashlib.sha256(block * FILE_MB).hexdigest()
    peak_before = peak_rss_kb(server.proc.pid)
    sent = client.put(f"{files}/big.bin", content=iter([block] * FILE_MB))  # chunked
    assert sent.status_code == 201, sent.text
    assert sent.json() == {"path": "big.bin", "size": FILE_MB << 20}
    assert peak_rss_kb(server.proc.pid) - peak_before < 32 << 10  # half the file, in KiB
    seen = run(
        client,
        sid,
        "import hashlib; print(hashlib.file_digest(open('big.bin', 'rb'), 'sha256').hexdigest())",
    )
    assert seen.strip() == digest
    # Past the file cap, declared or not: 413 before or while reading, and no file.
    for body in (block * (FILE_MB + 1), iter([block] * (FILE_MB + 1))):
        over = client.put(f"{files}/over.bin", content=body)
        assert over.status_code == 413 and f"{FILE_MB << 20} bytes" in over.json()["detail"]
    assert client.get(f"{files}/over.bin").status_code == 404
    # Past the sandbox's disk: 507, and no file.
    small = create(client, limits={"disk_mb": 16})
    full = client.put(f"/v1/sandboxes/{small}/files/fill.bin", content=iter([block] * 32))
    assert full.status_code == 507 and "disk_mb" in full.json()["detail"]
    assert client.get(f"/v1/sandboxes/{small}/files/fill.bin").status_code == 404
    # Other routes keep the JSON body cap.
    body = {"cmd": "true", "env": {"X": "x" * (BODY_KB << 10)}}
    assert client.post(f"{files[: -len('/files')]}/commands", json=body).status_code == 413


def test_files_a_running_program_holds_are_a_conflict(client: httpx.Client) -> None:
    sid = create(client)
    files = f"/v1/sandboxes/{sid}/files"
    run(client, sid, "import os, shutil; shutil.copy('/bin/sleep', 'sleeper'); os.mkdir('busy')")
    commands = f"/v1/sandboxes/{sid}/commands"
    for cmd in [SLEEPER, WRITER]:
        assert client.post(commands, json={"cmd": cmd, "background": True}).status_code == 202
    wait_until(lambda: client.get(f"{files}/started").status_code == 200)
    wait_until(lambda: client.get(files, params={"path": "busy"}).json())
    overwrite = client.put(f"{files}/sleeper", content=b"x")
    assert overwrite.status_code == 409 and "running" in overwrite.json()["detail"]
    answers = [client.delete(f"{files}/busy").status_code for _ in range(20)]
    assert set(answers) <= {204, 404, 409}, answers


def test_fuzzed_file_requests_get_no_server_error(client: httpx.Client, server: Server) -> None:
    sid = create(client)
    # A workspace as a program may leave it: names that are not UTF-8, of 255 bytes.
    run(client, sid, FUZZ_WORKSPACE)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [
        operation.ok()
        for operation in schema.get_all_operations()
        if operation.ok().path.startswith("/v1/sandboxes/{sandbox_id}/files")
    ]
    assert len(operations) == 4
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def check(case: schemathesis.Case) -> None:
            case.path_parameters["sandbox_id"] = sid
            response = case.call_and_validate(
                headers={"X-API-Key": API_KEY}, excluded_checks=[positive_data_acceptance]
            )
            if response.status_code >= 400:
                assert response.headers["content-type"][0] == PROBLEM_MEDIA_TYPE

        check()
    assert client.get(f"/v1/sandboxes/{sid}").json()["status"] == "running"
