"""The SDK's ``client.sandboxes``, sync and asyncio, against a real server."""

from __future__ import annotations

import asyncio

import httpx

from execbox.client import AsyncClient, Client, NotFoundError
from execbox.client.sandboxes import BuildUpdate, CommandHandle
from execbox.sandboxes.schemas import CommandInfo
from kit.servers import API_KEY, Server

APP = """\
import http.server
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("page.txt", "rb").read()
        self.send_response(200); self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 8080), Page).serve_forever()
"""


def test_sync_sdk(server: Server) -> None:
    with Client(server.url, api_key=API_KEY) as client:
        sandbox = client.sandboxes.create(timeout_s=120, metadata={"sdk": "sync"})
        try:
            sandbox.files.write("dir/hello.txt", "hello")
            sandbox.files.write("blob", b"\x00\xff")
            assert sandbox.files.read("blob") == b"\x00\xff"
            assert [e.path for e in sandbox.files.list("dir")] == ["dir/hello.txt"]
            done = sandbox.commands.run("cat dir/hello.txt")
            assert not isinstance(done, CommandHandle) and done.result is not None
            assert done.result.stdout == "hello"
            lines: list[str] = []
            streamed = sandbox.commands.run("echo one; echo two >&2", on_stdout=lines.append,
                                            on_stderr=lines.append)  # fmt: skip
            assert not isinstance(streamed, CommandHandle) and streamed.result is not None
            assert "".join(lines).split() in (["one", "two"], ["two", "one"])
            assert streamed.result.exit_code == 0
            echo = sandbox.commands.run("read x; echo got $x", background=True)
            assert isinstance(echo, CommandHandle)
            echo.send_stdin("it\n", close=True)
            assert echo.wait().result is not None and echo.info.status == "finished"
            sandbox.files.remove("dir")
            try:
                sandbox.files.read("dir/hello.txt")
                raise AssertionError("the file should be gone")
            except NotFoundError:
                pass
            # Builds and the preview URL; reconnect from another client by id.
            updates: list[str] = []
            build = sandbox.build(
                [{"path": "app.py", "content": APP}, {"path": "page.txt", "content": "v1"}],
                check="python3 -m py_compile app.py",
                start={"cmd": "python3 app.py", "port": 8080},
                on_event=lambda e: isinstance(e, BuildUpdate) and updates.append(e.build.status),
            )
            assert build.status == "ready" and updates[-1] == "ready"
            assert build.preview_url == sandbox.get_preview_url(8080)
            assert (
                httpx.get(sandbox.get_preview_url(8080), headers={"X-API-Key": API_KEY}).text
                == "v1"
            )
            with Client(server.url, api_key=API_KEY) as other:
                again = other.sandboxes.connect(sandbox.id)
                assert again.info.build_version == 1
                assert [s.id for s in other.sandboxes.list(metadata={"sdk": "sync"})] == [
                    sandbox.id
                ]
            assert sandbox.set_timeout(300).expires_at > build.created_at
        finally:
            assert sandbox.kill().status == "killed"


def test_async_sdk(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=API_KEY) as client:
            sandbox = await client.sandboxes.create()
            try:
                await sandbox.files.write("x.txt", "async")
                done = await sandbox.commands.run(["cat", "x.txt"])
                assert isinstance(done, CommandInfo) and done.result is not None
                assert done.result.stdout == "async"
                out: list[str] = []
                await sandbox.commands.run("echo streamed", on_stdout=out.append)
                assert out == ["streamed\n"]
            finally:
                await sandbox.kill()

    asyncio.run(scenario())
