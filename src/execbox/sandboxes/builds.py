"""Builds: files, dependencies, checks and the app of a sandbox, as a state machine.

    queued → scaffold → deps → checks → starting → ready | failed

One build runs at a time per sandbox (the next waits, queued). Every step is
stored with its timestamps and published on the build's event log (SSE). The app
of the newest ready build is the sandbox's: a new build stops the old app only
when its own is about to start, so a build failing its checks leaves the previous
version serving. A failure names the step, the tail of its output, says what to do
in words and carries a debug id logged next to the details (and the traceback, for
a fault of ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import structlog

from execbox.engine import (
    Command,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    WorkspacePathError,
)
from execbox.logging import internal_error
from execbox.models import Stage
from execbox.runner.results import verdict_of
from execbox.sandboxes.eventlog import EventLog
from execbox.sandboxes.schemas import (
    BuildCreate,
    BuildError,
    BuildInfo,
    BuildStatus,
    BuildStep,
    CommandCreate,
)
from execbox.sandboxes.service import (
    BASE_ENV,
    LiveCommand,
    LiveSandbox,
    SandboxGone,
    SandboxService,
    _new_id,
    argv_of,
)
from execbox.store import utcnow

log = structlog.get_logger(__name__)

TAIL_CHARS = 4000
TAIL_BYTES = 4 * TAIL_CHARS  # enough for TAIL_CHARS characters of any UTF-8
PORT_POLL_S = 0.05
BUILD_LOG_BYTES = 1 << 20
MAX_BUILDS_KEPT = 100  # finished builds whose events stay in memory, per sandbox


class BuildFailed(Exception):
    def __init__(self, message: str, output_tail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.output_tail = output_tail


class BuildNotFound(LookupError):
    pass


def preview_path(sandbox_id: str, port: int) -> str:
    return f"/v1/sandboxes/{sandbox_id}/ports/{port}/"


PREVIEW_PATH = re.compile(r"/v1/sandboxes/(?P<sandbox_id>[^/]+)/ports/(?P<port>[0-9]+)/")


def public_preview_url(path: str, base_url: str, domain: str | None) -> str:
    """``path`` (a preview_path) as an absolute URL of the server at ``base_url``: on
    the preview's own host, ``{port}-{sandbox_id}.{domain}``, when there is a domain."""
    found = PREVIEW_PATH.fullmatch(path)
    if domain is None or found is None:
        return base_url.rstrip("/") + path
    base = urlsplit(base_url)
    port = f":{base.port}" if base.port else ""
    return f"{base.scheme}://{found['port']}-{found['sandbox_id']}.{domain}{port}/"


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:]


class _Run:
    """One build under way: its record, kept and published at every change."""

    def __init__(self, store_save: Callable[[BuildInfo], Awaitable[None]], build: BuildInfo,
                 events: EventLog, live: LiveSandbox) -> None:  # fmt: skip
        self._save = store_save
        self.build = build
        self.events = events
        self.live = live
        self.output = b""  # the end of the current step's output, for its tail

    async def update(self, **changes: object) -> None:
        self.build = self.build.model_copy(update=changes)
        self.live.builds[self.build.id] = (self.build, self.events)
        await self._save(self.build)
        record = self.build.model_dump(mode="json")
        self.events.append("build", record, len(json.dumps(record)))

    def emit(self, stream: str, chunk: bytes) -> None:
        # Only the tail is kept: an app may write without end while it starts.
        self.output = (self.output + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
        step = self.build.steps[-1].name if self.build.steps else ""
        self.events.write("output", chunk, {"step": step, "stream": stream})

    def tail(self) -> str:
        return self.output.decode(errors="replace")[-TAIL_CHARS:]

    async def step(self, name: BuildStatus, work: Callable[[], Awaitable[None]]) -> None:
        self.output = b""
        started = BuildStep(name=name.value, status="running", started_at=utcnow())
        await self.update(status=name, steps=[*self.build.steps, started])
        try:
            await work()
        except BuildFailed as exc:
            exc.output_tail = exc.output_tail or self.tail() or None
            await self._end_step("failed", exc.output_tail)
            raise
        except BaseException:
            await self._end_step("failed", self.tail() or None)
            raise
        await self._end_step("ok", self.tail() or None)

    async def _end_step(self, status: str, tail: str | None) -> None:
        step = self.build.steps[-1].model_copy(
            update={"status": status, "finished_at": utcnow(), "output_tail": tail}
        )
        await self.update(steps=[*self.build.steps[:-1], step])


class Builds:
    def __init__(self, service: SandboxService) -> None:
        self.service = service

    async def submit(self, sandbox_id: str, request: BuildCreate) -> BuildInfo:
        live = await self.service.live(sandbox_id)
        version = live.info.build_version + 1
        await self.service.update_info(live, build_version=version)
        build = BuildInfo(
            id=_new_id("bld"),
            sandbox_id=sandbox_id,
            build_version=version,
            status=BuildStatus.QUEUED,
            created_at=utcnow(),
        )
        events = EventLog(BUILD_LOG_BYTES, live.logs)
        run = _Run(self.service.store.save_build, build, events, live)
        await run.update()
        self._forget_old_builds(live)
        self.service.spawn(self._run(run, request))
        return run.build

    @staticmethod
    def _forget_old_builds(live: LiveSandbox) -> None:
        """Builds past the newest MAX_BUILDS_KEPT are read from the store instead."""
        finished = [b for b in live.builds if live.builds[b][1].closed]
        for build_id in finished[: max(0, len(live.builds) - MAX_BUILDS_KEPT)]:
            live.builds.pop(build_id)[1].release()

    async def get(self, sandbox_id: str, build_id: str) -> tuple[BuildInfo, EventLog | None]:
        live = self.service.find_live(sandbox_id)
        if live is not None and build_id in live.builds:
            return live.builds[build_id]
        await self.service.get(sandbox_id)  # SandboxNotFound for an unknown sandbox
        build = await self.service.store.get_build(sandbox_id, build_id)
        if build is None:
            raise BuildNotFound(f"no build {build_id} in sandbox {sandbox_id}")
        return build, None

    async def list(self, sandbox_id: str) -> list[BuildInfo]:
        await self.service.get(sandbox_id)
        return await self.service.store.builds(sandbox_id)

    async def _run(self, run: _Run, request: BuildCreate) -> None:
        live = run.live
        async with live.build_lock:
            try:
                if self.service.find_live(live.info.id) is not live:
                    raise SandboxGone(live.info)
                await run.step(BuildStatus.SCAFFOLD, lambda: self._scaffold(run, request))
                if request.install is not None:
                    await run.step(BuildStatus.DEPS, lambda: self._deps(run, request))
                if request.check is not None:
                    await run.step(BuildStatus.CHECKS, lambda: self._check(run, request))
                if request.start is not None:
                    await run.step(BuildStatus.STARTING, lambda: self._start(run, request))
            except BuildFailed as exc:
                await self._failed(run, exc.message, exc.output_tail, debug_id=None)
            except (SandboxError, SandboxGone) as exc:
                # The sandbox ended under the build (expired, deleted, out of memory).
                await self._failed(run, f"the sandbox stopped during the build: {exc}", None, None)
            except Exception:
                debug_id = internal_error(
                    "sandbox build failed", sandbox_id=live.info.id, build_id=run.build.id
                )
                await self._failed(
                    run, "an internal error stopped the build; quote the debug_id to the "
                    "operators", run.tail() or None, debug_id,
                )  # fmt: skip
            else:
                await self._ready(run, request)
            finally:
                run.events.close()

    async def _ready(self, run: _Run, request: BuildCreate) -> None:
        path = preview_path(run.live.info.id, request.start.port) if request.start else None
        if path is not None:
            await self.service.update_info(run.live, preview_url=path)
        await run.update(status=BuildStatus.READY, preview_url=path, finished_at=utcnow())

    async def _failed(
        self, run: _Run, message: str, tail: str | None, debug_id: str | None
    ) -> None:
        step = run.build.steps[-1].name if run.build.steps else BuildStatus.QUEUED.value
        if debug_id is None:
            debug_id = secrets.token_hex(6)
            log.warning(
                "sandbox build failed", debug_id=debug_id, sandbox_id=run.live.info.id,
                build_id=run.build.id, step=step, reason=message, output_tail=tail,
            )  # fmt: skip
        error = BuildError(step=step, message=message, output_tail=tail, debug_id=debug_id)
        await run.update(status=BuildStatus.FAILED, error=error, finished_at=utcnow())

    # -- steps -------------------------------------------------------------------------

    async def _scaffold(self, run: _Run, request: BuildCreate) -> None:
        workspace = run.live.session.workspace
        for file in request.files:
            try:
                workspace.write_file(file.path, file.data())
            except (WorkspacePathError, SandboxError) as exc:
                raise BuildFailed(f"could not write {file.path!r}: {exc}") from exc
            run.emit("stdout", f"wrote {file.path}\n".encode())

    async def _deps(self, run: _Run, request: BuildCreate) -> None:
        assert request.install is not None
        argv = argv_of(request.install)
        if run.live.info.network:
            # The sandbox's own namespace never has a network: dependencies are fetched
            # by a one-shot box with network over the same workspace.
            result = await self._networked(run, argv)
            exit_code, verdict = result.exit_code, verdict_of(result).value
        else:
            stage = await self._command(run, argv)
            exit_code, verdict = stage.exit_code, stage.verdict.value
        if exit_code != 0:
            hint = "" if run.live.info.network else (
                "; the sandbox has no network: if the install downloads packages, create the "
                "sandbox with network: true (on a server that allows it) or vendor them in files"
            )  # fmt: skip
            raise BuildFailed(f"installing dependencies failed ({_how(exit_code, verdict)}){hint}")

    async def _networked(self, run: _Run, argv: list[str]) -> SandboxResult:
        limits, config = run.live.info.limits, self.service.config
        timeout = config.sandbox_build_step_timeout_s
        return await self.service.engine.run(
            run.live.session.workspace,
            Command(argv, dict(BASE_ENV)),
            SandboxLimits(
                cpu_time_s=timeout, wall_time_s=timeout, memory_bytes=limits.memory_mb << 20,
                processes=limits.processes, output_bytes=config.sandbox_output_kb << 10,
                file_size_bytes=limits.disk_mb << 20,
            ),
            on_output=run.emit,
            network=True,
        )  # fmt: skip

    async def _check(self, run: _Run, request: BuildCreate) -> None:
        assert request.check is not None
        stage = await self._command(run, argv_of(request.check))
        if stage.exit_code != 0:
            raise BuildFailed(
                f"the check failed ({_how(stage.exit_code, stage.verdict.value)}); "
                "its output is in output_tail: fix the code or the check and build again"
            )

    async def _command(self, run: _Run, argv: list[str]) -> Stage:
        timeout = self.service.config.sandbox_build_step_timeout_s
        command = await self.service.start_command(
            run.live, CommandCreate(cmd=argv, timeout_s=timeout)
        )
        await self._forward(run, command)
        await command.process.wait()
        if run.live.session.ended.is_set():  # it did not fail: the sandbox went
            raise SandboxGone(run.live.info)
        assert command.info.result is not None
        return command.info.result

    @staticmethod
    async def _forward(run: _Run, command: LiveCommand) -> None:
        """The command's output into the build's log, until the command ends."""
        async for event in command.log.follow(0):
            if event.chunk is not None:
                run.emit(event.kind, event.chunk)

    async def _start(self, run: _Run, request: BuildCreate) -> None:
        assert request.start is not None
        live, port = run.live, request.start.port
        if live.app is not None:  # the previous version's app makes room for this one
            live.app.process.kill()
            await live.app.process.wait()
            live.app = None
        app = await self.service.start_command(
            live, CommandCreate(cmd=request.start.cmd, background=True)
        )
        await run.update(app_command_id=app.info.id)
        forward = asyncio.get_running_loop().create_task(self._forward(run, app))
        try:
            deadline = time.monotonic() + self.service.config.sandbox_start_wait_s
            while not await self.service.port_open(live, port):
                if run.live.session.ended.is_set():
                    raise SandboxGone(run.live.info)
                if app.process.done:
                    with contextlib.suppress(TimeoutError):  # its last words, for the tail
                        await asyncio.wait_for(asyncio.shield(forward), 1)
                    ended = await app.process.wait()
                    raise BuildFailed(
                        f"the app ended ({_how(ended.exit_code, verdict_of(ended).value)}) before "
                        f"listening on port {port}: see output_tail"
                    )
                if time.monotonic() > deadline:
                    app.process.kill()
                    raise BuildFailed(
                        f"the app did not listen on 127.0.0.1:{port} within "
                        f"{self.service.config.sandbox_start_wait_s:g} s: check start.cmd and "
                        "start.port"
                    )
                await asyncio.sleep(PORT_POLL_S)
        finally:
            forward.cancel()
        live.app = app


def _how(exit_code: int | None, verdict: str) -> str:
    if exit_code is not None:
        return f"exit code {exit_code}"
    return f"{verdict}" if verdict != "runtime_error" else "killed by a signal"
