"""Persistent sandboxes: lifecycle, expiry, files and commands.

A sandbox lives in the server process that created it (its processes are children
of this process: bwrap runs with --die-with-parent), so the live part (the session,
its commands and their logs) is held here in memory, and the record in the store
says which server owns it. A restarted server finds its old records still marked
running and reports them as lost: their processes ended with the old server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import httpcore
import structlog

from execbox.config import Settings
from execbox.engine import Command, Sandbox, SandboxError, SandboxResult
from execbox.engine.bwrap import WORKDIR
from execbox.engine.netns import NamespaceDialer, SandboxNetwork
from execbox.engine.session import (
    Process,
    Session,
    SessionLimits,
    command_limits,
    open_session,
)
from execbox.engine.workspace import Entry, Workspace, split_path
from execbox.runner.results import to_stage
from execbox.sandboxes.eventlog import EventLog, LogBudget
from execbox.sandboxes.schemas import (
    BuildInfo,
    CommandCreate,
    CommandInfo,
    CommandStatus,
    ResolvedSandboxLimits,
    SandboxCreate,
    SandboxInfo,
    SandboxStatus,
)
from execbox.sandboxes.settings import SandboxSettings
from execbox.sandboxes.store import SandboxStore
from execbox.store import Database, utcnow

log = structlog.get_logger(__name__)
T = TypeVar("T")

BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",  # a server's logs should arrive as it writes them
}
MAX_COMMANDS_KEPT = 100  # finished commands remembered per sandbox, newest first
FINISHED_LOG_BYTES = 64 << 10  # the output a finished command keeps for replay
FILE_CHUNK = 1 << 20
REFILL_DELAY_S = 0.2
INIT_DIED = "its init process ended (out of memory?)"


class SandboxNotFound(LookupError):
    pass


class SandboxGone(Exception):
    """The sandbox exists as a record only: it expired, was killed or was lost."""

    def __init__(self, info: SandboxInfo) -> None:
        super().__init__(f"sandbox {info.id} is {info.status.value}: {info.end_reason}")
        self.info = info


class SandboxElsewhere(Exception):
    """The sandbox runs in another server process, which alone can reach it."""


class TooManySandboxes(Exception):
    pass


class CommandNotFound(LookupError):
    pass


class FileTooLarge(Exception):
    pass


class TooManyCommands(Exception):
    pass


class InvalidSandboxRequest(ValueError):
    """The caller asked for something this server does not allow (a 4xx)."""


@dataclass
class LiveCommand:
    info: CommandInfo
    process: Process
    log: EventLog


@dataclass
class LiveSandbox:
    info: SandboxInfo
    session: Session
    logs: LogBudget  # shared by the logs of its commands and builds
    expiry: asyncio.TimerHandle | None = None
    commands: OrderedDict[str, LiveCommand] = field(default_factory=OrderedDict)
    builds: dict[str, tuple[BuildInfo, EventLog]] = field(default_factory=dict)
    build_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    app: LiveCommand | None = None  # the running app of the newest ready build
    preview: httpcore.AsyncConnectionPool | None = None
    # One file-system walk (a listing, a removal) at a time per sandbox, in a thread.
    files_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _new_id(prefix: str) -> str:
    return f"{prefix}{time.time_ns() // 1000:013x}{secrets.token_hex(6)}"


def _owner_pid(owner: str) -> int | None:
    host, _, rest = owner.partition("/")
    pid = rest.partition("/")[0]
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def argv_of(cmd: list[str] | str) -> list[str]:
    """A shell command line runs under /bin/sh -c; a list is the argv itself."""
    return ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


def workdir(cwd: str | None) -> str:
    """A directory inside /box (relative paths are relative to it)."""
    parts = split_path(cwd or "")
    return "/".join([WORKDIR, *parts])


def _env(extra: dict[str, str]) -> dict[str, str]:
    for name, value in extra.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise InvalidSandboxRequest(f"invalid environment variable: {name!r}")
    return {**BASE_ENV, **extra}


class SandboxService:
    def __init__(
        self, settings: Settings, config: SandboxSettings, engine: Sandbox, db: Database
    ) -> None:
        self.settings = settings
        self.config = config
        self.engine = engine
        self.store = SandboxStore(db)
        self.dialer = NamespaceDialer()
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._live: dict[str, LiveSandbox] = {}
        self._starting = 0  # creations under way, counted against the cap
        self._tasks: set[asyncio.Task[Any]] = set()
        # Sessions started ahead (bwrap, namespaces, cgroup, tmpfs: most of a create's
        # cost), given their limits when taken.
        self._warm: list[Session] = []
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def start(cls, settings: Settings, engine: Sandbox, db: Database) -> SandboxService:
        service = cls(settings, SandboxSettings(), engine, db)
        service._check_uid_count()
        await service._mark_lost()
        service._refill()
        return service

    def _check_uid_count(self) -> None:
        """Warns when this server may want more sandboxes at once than it has uids for
        (each has a uid of its own): the ones beyond would be refused (503)."""
        settings, config = self.settings, self.config
        executions = settings.warm_pool_size + settings.workers  # idle boxes, boxes in use
        wanted = executions + config.max_sandboxes + config.sandbox_warm_pool
        if settings.sandbox_uid_count < wanted:
            log.warning(
                "fewer sandbox uids than sandboxes this server may run at once: raise "
                "EXECBOX_SANDBOX_UID_COUNT",
                uids=settings.sandbox_uid_count,
                sandboxes=wanted,
            )

    def _refill(self) -> None:
        if not self._closed and (self._filling is None or self._filling.done()):
            self._filling = self.spawn(self._fill())

    async def _fill(self) -> None:
        default = self._session_limits(self._resolve(SandboxCreate())[0])
        while not self._closed and len(self._warm) < self.config.sandbox_warm_pool:
            try:
                self._warm.append(await open_session(self.engine, default))
            except Exception:
                log.exception("sandbox warm pool fill failed")
                return

    async def _new_session(self, limits: SessionLimits) -> Session:
        while self._warm:
            session = self._warm.pop()
            # Refilled a moment later, so that starting the next sandbox (bwrap, mounts)
            # does not compete for the CPU with this one's first command.
            asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._refill)
            if session.ended.is_set():
                self.spawn(session.close())
                continue
            session.set_limits(limits)
            return session
        return await open_session(self.engine, limits)

    @staticmethod
    def _session_limits(limits: ResolvedSandboxLimits) -> SessionLimits:
        return SessionLimits(
            memory_bytes=limits.memory_mb << 20,
            processes=limits.processes,
            disk_mb=limits.disk_mb,
            cpus=limits.cpus,
        )

    async def _mark_lost(self) -> None:
        """Sandboxes of dead server processes on this host are gone for good."""
        for info, owner in await self.store.running_of(socket.gethostname() + "/"):
            pid = _owner_pid(owner)
            if pid is None or pid == os.getpid() or not _pid_alive(pid):
                await self._record_end(info, owner, SandboxStatus.LOST, "the server restarted")

    @staticmethod
    def _ended(info: SandboxInfo, status: SandboxStatus, reason: str) -> SandboxInfo:
        changes = {
            "status": status,
            "end_reason": reason,
            "ended_at": utcnow(),
            "preview_url": None,
        }
        return info.model_copy(update=changes)

    async def _record_end(
        self, info: SandboxInfo, owner: str, status: SandboxStatus, reason: str
    ) -> SandboxInfo:
        info = self._ended(info, status, reason)
        await self.store.save(info, owner)
        return info

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task of this service, cancelled at close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle ---------------------------------------------------------------

    def _resolve(self, request: SandboxCreate) -> tuple[ResolvedSandboxLimits, float]:
        c, asked = self.config, request.limits
        checks = [
            ("limits.memory_mb", asked.memory_mb, c.sandbox_memory_mb, c.sandbox_max_memory_mb),
            ("limits.processes", asked.processes, c.sandbox_processes, c.sandbox_max_processes),
            ("limits.cpus", asked.cpus, c.sandbox_cpus, c.sandbox_max_cpus),
            ("limits.disk_mb", asked.disk_mb, c.sandbox_disk_mb, c.sandbox_max_disk_mb),
            ("timeout_s", request.timeout_s, c.sandbox_timeout_s, c.sandbox_max_timeout_s),
        ]
        values: list[Any] = []
        for name, value, default, maximum in checks:
            if value is not None and value > maximum:
                raise InvalidSandboxRequest(f"{name} may be at most {maximum:g} on this server")
            values.append(default if value is None else value)
        memory, processes, cpus, disk, timeout = values
        limits = ResolvedSandboxLimits(
            memory_mb=memory, processes=processes, cpus=cpus, disk_mb=disk
        )
        return limits, timeout

    async def create(self, request: SandboxCreate) -> SandboxInfo:
        limits, timeout = self._resolve(request)
        if request.network and not self.settings.allow_network:
            raise InvalidSandboxRequest(
                "network access is disabled on this server (EXECBOX_ALLOW_NETWORK)"
            )
        if len(self._live) + self._starting >= self.config.max_sandboxes:
            raise TooManySandboxes(
                f"this server runs at most {self.config.max_sandboxes} sandboxes at once; "
                "delete one you no longer need or retry later"
            )
        self._starting += 1
        try:
            session = await self._new_session(self._session_limits(limits))
        finally:
            self._starting -= 1
        now = utcnow()
        info = SandboxInfo(
            id=_new_id("sb"),
            status=SandboxStatus.RUNNING,
            metadata=request.metadata,
            limits=limits,
            network=request.network,
            created_at=now,
            expires_at=now + timedelta(seconds=timeout),
            preview_token=secrets.token_urlsafe(24),
        )
        live = LiveSandbox(info, session, LogBudget(self.config.sandbox_logs_kb << 10))
        self._live[info.id] = live
        try:
            await self.store.save(info, self.owner)
        except BaseException:
            await self._end(live, SandboxStatus.FAILED, "its record could not be stored")
            raise
        self._schedule_expiry(live)
        self.spawn(self._watch(live))
        return info

    def _schedule_expiry(self, live: LiveSandbox) -> None:
        if live.expiry is not None:
            live.expiry.cancel()
        delay = (live.info.expires_at - utcnow()).total_seconds()
        live.expiry = asyncio.get_running_loop().call_later(
            max(0.0, delay),
            lambda: self.spawn(self._end(live, SandboxStatus.EXPIRED, "its timeout passed")),
        )

    async def _watch(self, live: LiveSandbox) -> None:
        """A sandbox whose init died (e.g. out of memory) ends as failed, not half-alive."""
        await live.session.ended.wait()
        if self._live.get(live.info.id) is live:
            await self._end(live, SandboxStatus.FAILED, INIT_DIED)

    async def _end(self, live: LiveSandbox, status: SandboxStatus, reason: str) -> SandboxInfo:
        """Kills every process, frees the workspace and records why; idempotent. The
        sandbox reads as ended from the first moment, never as half-alive."""
        if self._live.get(live.info.id) is not live or live.info.status != SandboxStatus.RUNNING:
            return live.info
        live.info = self._ended(live.info, status, reason)
        if live.expiry is not None:
            live.expiry.cancel()
        live.session.kill()
        for command in live.commands.values():
            command.log.close()
        for _, build_log in live.builds.values():
            build_log.close()
        try:
            if live.preview is not None:
                await live.preview.aclose()
            await live.session.close()
        finally:
            del self._live[live.info.id]
            await self.store.save(live.info, self.owner)
        log.info("sandbox ended", sandbox_id=live.info.id, status=status.value, reason=reason)
        return live.info

    async def get(self, sandbox_id: str) -> SandboxInfo:
        live = self._live.get(sandbox_id)
        if live is not None:
            return live.info
        found = await self.store.get(sandbox_id)
        if found is None:
            raise SandboxNotFound(sandbox_id)
        info, owner = found
        if info.status == SandboxStatus.RUNNING and owner != self.owner:
            pid = _owner_pid(owner)
            if pid is not None and (pid == os.getpid() or not _pid_alive(pid)):
                return await self._record_end(
                    info, owner, SandboxStatus.LOST, "the server restarted"
                )
        return info

    async def list(
        self, metadata: dict[str, str], status: SandboxStatus | None, limit: int
    ) -> list[SandboxInfo]:
        # Metadata is filtered here: JSON queries differ between SQLite and PostgreSQL,
        # and the number of sandboxes is small.
        found = await self.store.list(status, limit if not metadata else 10_000)
        matching = [
            self._live[i.id].info if i.id in self._live else i
            for i in found
            if all(i.metadata.get(k) == v for k, v in metadata.items())
        ]
        return matching[:limit]

    def find_live(self, sandbox_id: str) -> LiveSandbox | None:
        return self._live.get(sandbox_id)

    async def live(self, sandbox_id: str) -> LiveSandbox:
        live = self._live.get(sandbox_id)
        if live is not None:
            if live.info.status != SandboxStatus.RUNNING:  # ending right now
                raise SandboxGone(live.info)
            return live
        info = await self.get(sandbox_id)
        if info.status == SandboxStatus.RUNNING:
            raise SandboxElsewhere(
                f"sandbox {sandbox_id} runs in another execbox server process; send its "
                "requests to that server"
            )
        raise SandboxGone(info)

    async def kill(self, sandbox_id: str) -> SandboxInfo:
        return await self._end(await self.live(sandbox_id), SandboxStatus.KILLED, "deleted")

    async def set_timeout(self, sandbox_id: str, timeout_s: float) -> SandboxInfo:
        live = await self.live(sandbox_id)
        if timeout_s > self.config.sandbox_max_timeout_s:
            raise InvalidSandboxRequest(
                f"timeout_s may be at most {self.config.sandbox_max_timeout_s:g} on this server"
            )
        live.info = live.info.model_copy(
            update={"expires_at": utcnow() + timedelta(seconds=timeout_s)}
        )
        self._schedule_expiry(live)
        await self.store.save(live.info, self.owner)
        return live.info

    async def update_info(self, live: LiveSandbox, **changes: Any) -> None:
        live.info = live.info.model_copy(update=changes)
        await self.store.save(live.info, self.owner)

    # -- files ---------------------------------------------------------------------

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        declared_size: int | None = None,
    ) -> int:
        """Streams ``chunks`` into the file; a failed or oversized upload leaves no file,
        and one whose ``declared_size`` is over the cap is refused before any byte is
        read. Writes go straight to the tmpfs (memory speed): no thread is needed."""
        workspace = (await self.live(sandbox_id)).session.workspace
        cap = self.config.sandbox_file_mb << 20
        too_large = FileTooLarge(f"files sent through the API are at most {cap} bytes")
        if declared_size is not None and declared_size > cap:
            raise too_large
        fd = workspace.open_file(path, write=True)
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    raise too_large
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            with contextlib.suppress(OSError, ValueError):
                workspace.remove(path)
            raise
        finally:
            os.close(fd)
        return size

    async def read_file(self, sandbox_id: str, path: str) -> tuple[int, AsyncIterator[bytes]]:
        """The file's size and its content in chunks (as it was when opened: a file
        that grows meanwhile is cut at that size)."""
        workspace = (await self.live(sandbox_id)).session.workspace
        cap = self.config.sandbox_file_mb << 20
        fd = workspace.open_file(path, write=False)
        size = os.fstat(fd).st_size
        if size > cap:
            os.close(fd)
            raise FileTooLarge(f"files read through the API are at most {cap} bytes")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                left = size
                while left > 0 and (chunk := os.read(fd, min(left, FILE_CHUNK))):
                    left -= len(chunk)
                    yield chunk
            finally:
                os.close(fd)

        return size, chunks()

    async def _in_thread(self, sandbox_id: str, work: Callable[[Workspace], T]) -> T:
        """Runs ``work`` on the sandbox's workspace in a thread: a directory can hold
        millions of entries, and walking it must not stall every other request. One
        walk at a time per sandbox, so one sandbox cannot take every thread."""
        live = await self.live(sandbox_id)
        async with live.files_lock:
            return await asyncio.to_thread(work, live.session.workspace)

    async def remove_file(self, sandbox_id: str, path: str) -> None:
        await self._in_thread(sandbox_id, lambda workspace: workspace.remove(path))

    async def list_files(self, sandbox_id: str, path: str, after: bytes, limit: int) -> list[Entry]:
        """The first ``limit`` entries of a directory whose names sort after ``after``."""
        return await self._in_thread(
            sandbox_id, lambda workspace: workspace.list_dir(path, after=after, limit=limit)
        )

    # -- commands ------------------------------------------------------------------

    async def start_command(
        self,
        live: LiveSandbox,
        request: CommandCreate,
        *,
        on_finish: Callable[[LiveCommand, SandboxResult], None] | None = None,
    ) -> LiveCommand:
        """Starts a command; its output goes to its replayable log (and, for a
        foreground command, to its result)."""
        running = sum(not c.process.done for c in live.commands.values())
        if running >= self.config.sandbox_max_commands:
            raise TooManyCommands(
                f"sandbox {live.info.id} runs {running} commands already, the most allowed: "
                "wait for one to end or kill one"
            )
        argv = argv_of(request.cmd)
        command = Command(argv, _env(request.env), workdir(request.cwd))
        timeout = request.timeout_s
        if timeout is None and not request.background:
            timeout = self.config.sandbox_command_timeout_s
        limits = command_limits(live.session.limits, timeout, self.config.sandbox_output_kb << 10)
        events = EventLog(self.config.sandbox_log_kb << 10, live.logs)
        try:
            process = await live.session.exec(
                command, limits, on_output=events.write, capture=not request.background
            )
        except SandboxError:
            if not live.session.ended.is_set():
                raise
            # Its init died just now: the caller hears that it is gone, not a 500.
            raise SandboxGone(await self._end(live, SandboxStatus.FAILED, INIT_DIED)) from None
        info = CommandInfo(
            id=_new_id("cmd"),
            sandbox_id=live.info.id,
            cmd=argv,
            background=request.background,
            status=CommandStatus.RUNNING,
            started_at=utcnow(),
        )
        running = LiveCommand(info, process, events)
        live.commands[info.id] = running
        self._forget_old_commands(live)
        if request.stdin is not None:
            self.spawn(self._feed(process, request.stdin.encode(), close=True))
        elif not request.background:
            process.close_stdin()
        self.spawn(self._finish(running, on_finish))
        return running

    @staticmethod
    async def _feed(process: Process, data: bytes, close: bool) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await process.write(data)
        if close:
            process.close_stdin()

    async def _finish(
        self,
        command: LiveCommand,
        on_finish: Callable[[LiveCommand, SandboxResult], None] | None,
    ) -> None:
        result = await command.process.wait()
        command.info = command.info.model_copy(
            update={
                "status": CommandStatus.FINISHED,
                "finished_at": utcnow(),
                "result": to_stage(result),
            }
        )
        command.log.append("exit", command.info.model_dump(mode="json"))
        command.log.shrink(FINISHED_LOG_BYTES)
        command.log.close()
        if on_finish is not None:
            on_finish(command, result)

    def _forget_old_commands(self, live: LiveSandbox) -> None:
        finished = [c for c in live.commands.values() if c.process.done]
        for command in finished[: max(0, len(live.commands) - MAX_COMMANDS_KEPT)]:
            del live.commands[command.info.id]
            command.log.release()

    async def run_command(self, sandbox_id: str, request: CommandCreate) -> CommandInfo:
        """Foreground: the finished command; background: the running one, at once."""
        live = await self.live(sandbox_id)
        command = await self.start_command(live, request)
        if not request.background:
            await command.process.wait()
            await self._settled(command)
        return command.info

    @staticmethod
    async def _settled(command: LiveCommand) -> None:
        """Waits for the bookkeeping of a finished process (its result in the info)."""
        async for _ in command.log.follow(0):
            pass

    async def command(self, sandbox_id: str, command_id: str) -> LiveCommand:
        live = await self.live(sandbox_id)
        command = live.commands.get(command_id)
        if command is None:
            raise CommandNotFound(f"no command {command_id} in sandbox {sandbox_id}")
        return command

    async def commands(self, sandbox_id: str) -> list[CommandInfo]:
        return [c.info for c in (await self.live(sandbox_id)).commands.values()]

    async def send_stdin(self, sandbox_id: str, command_id: str, data: bytes, close: bool) -> None:
        command = await self.command(sandbox_id, command_id)
        if command.process.done:
            raise InvalidSandboxRequest(f"command {command_id} has finished")
        try:
            if data:
                await command.process.write(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise InvalidSandboxRequest(f"command {command_id} closed its stdin") from exc
        if close:
            command.process.close_stdin()

    async def kill_command(self, sandbox_id: str, command_id: str) -> CommandInfo:
        command = await self.command(sandbox_id, command_id)
        command.process.kill()
        await command.process.wait()
        await self._settled(command)
        return command.info

    # -- preview ---------------------------------------------------------------------

    def preview_pool(self, live: LiveSandbox) -> httpcore.AsyncConnectionPool:
        if live.preview is None:
            live.preview = httpcore.AsyncConnectionPool(
                network_backend=SandboxNetwork(self.dialer, live.session.netns_fd),
                max_connections=32,
                keepalive_expiry=5,
            )
        return live.preview

    async def port_open(self, live: LiveSandbox, port: int) -> bool:
        try:
            sock = await self.dialer.connect(live.session.netns_fd, port)
        except OSError:
            return False
        sock.close()
        return True

    async def open_port(self, sandbox_id: str, port: int) -> socket.socket:
        """A socket connected to ``port`` on the sandbox's loopback (for WebSockets)."""
        live = await self.live(sandbox_id)
        return await self.dialer.connect(live.session.netns_fd, port)

    # -- the end ------------------------------------------------------------------------

    async def close(self) -> None:
        """The server stops: its sandboxes end with it, and say so."""
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        for session in self._warm:
            await session.close()
        self._warm.clear()
        for live in list(self._live.values()):
            with contextlib.suppress(Exception):
                await self._end(live, SandboxStatus.LOST, "the server stopped")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.dialer.close()
