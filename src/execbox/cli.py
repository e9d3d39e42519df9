"""The ``execbox`` command line."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from execbox.client import ExecboxError
from execbox.client.remote import run_remote
from execbox.config import get_settings
from execbox.engine import SandboxError
from execbox.languages import Languages
from execbox.models import ExecutionRequest, ExecutionResult, Limits, SourceFile, Verdict
from execbox.runner import InvalidRequest, Runner, RunnerEvent

app = typer.Typer(
    help=(
        "Run untrusted code in many languages, isolated and fast.\n\n"
        "Examples:\n\n"
        "  execbox run hello.py                    run a file locally, in the sandbox\n\n"
        "  execbox run main.c --stdin '3 4' --json  show the full result as JSON\n\n"
        "  execbox languages --check               self-test every language\n\n"
        "  execbox serve                           start the HTTP service"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
T = TypeVar("T")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except SandboxError as exc:
        raise _fail(str(exc)) from exc
    except (InvalidRequest, ExecboxError) as exc:
        raise _fail(str(exc)) from exc


async def _terminal_stdin() -> AsyncIterator[bytes]:
    """The terminal's input, line by line as typed, for interactive programs."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb", 0)
    )
    while chunk := await reader.read(4096):
        yield chunk


def _exit_status(result: ExecutionResult) -> int:
    """Follows the program: its exit code, 128 + signal, 1 for a compile error."""
    stage = result.run or (result.tests[-1] if result.tests else None)
    if result.verdict == Verdict.COMPILE_ERROR or stage is None:
        return 1
    if stage.exit_code is not None and stage.exit_code != 0:
        return stage.exit_code
    if stage.signal is not None:
        return 128 + stage.signal
    return 0 if result.verdict == Verdict.OK else 1


@app.command()
def run(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Source files; the first is the main file", exists=True, dir_okay=False
        ),
    ],
    language: Annotated[
        str | None, typer.Option("--language", "-l", help="Language (default: from extension)")
    ] = None,
    stdin: Annotated[str | None, typer.Option(help="Text given to the program's stdin")] = None,
    stdin_file: Annotated[
        Path | None, typer.Option(help="File given to the program's stdin", exists=True)
    ] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Argument for the program (repeatable)")
    ] = None,
    cpu_time: Annotated[float | None, typer.Option(help="CPU time limit, seconds")] = None,
    wall_time: Annotated[float | None, typer.Option(help="Wall time limit, seconds")] = None,
    memory: Annotated[int | None, typer.Option(help="Memory limit, MiB")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
    server: Annotated[
        str | None,
        typer.Option(envvar="EXECBOX_SERVER", help="Run on this execbox server (URL) instead"),
    ] = None,
) -> None:
    """Run a program locally in the sandbox (no server needed; run as root), or on
    an execbox server with --server (API key from EXECBOX_API_KEY).

    Output appears as the program writes it and the exit status follows the
    program's. With no --stdin/--stdin-file, a pipe on stdin is passed through
    and a terminal is forwarded line by line.
    """
    if stdin is not None and stdin_file is not None:
        raise _fail("give --stdin or --stdin-file, not both")
    table = Languages.load()
    if language is None:
        guessed = table.for_path(files[0].name)
        if guessed is None:
            raise _fail(
                f"cannot tell the language of {files[0].name}; pass -l LANG "
                f"(one of: {', '.join(table.names())})"
            )
        language = guessed.name
    sources = [_source_file(f) for f in files]
    stdin_bytes: bytes | None = None
    if stdin is not None:
        stdin_bytes = stdin.encode()
    elif stdin_file is not None:
        stdin_bytes = stdin_file.read_bytes()
    elif not sys.stdin.isatty():
        stdin_bytes = sys.stdin.buffer.read()
    try:
        request = ExecutionRequest(
            language=language,
            files=sources,
            args=arg or [],
            stdin=stdin_bytes.decode(errors="surrogateescape") if stdin_bytes else None,
            limits=Limits(cpu_time_s=cpu_time, wall_time_s=wall_time, memory_mb=memory),
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc

    def show(event: RunnerEvent) -> None:
        if as_json or event.kind == "stage":
            return
        stream = sys.stdout.buffer if event.kind == "stdout" else sys.stderr.buffer
        stream.write(event.data)
        stream.flush()

    async def go() -> ExecutionResult:
        live = _terminal_stdin() if stdin_bytes is None and sys.stdin.isatty() else None
        if server:
            return await run_remote(
                server, request, stdin=live, on_output=lambda s, d: show(RunnerEvent(s, "run", d))
            )
        runner = await Runner.create(get_settings().model_copy(update={"warm_pool_size": 0}))
        try:
            return await runner.execute(request, on_event=show, stdin=live)
        finally:
            await runner.close()

    result = _run_async(go())
    if as_json:
        print(result.model_dump_json(indent=2))
    elif result.verdict != Verdict.OK:
        stage = result.compile if result.verdict == Verdict.COMPILE_ERROR else result.run
        detail = stage.message if stage and stage.message else ""
        err.print(f"[yellow]execbox: {result.verdict.value}[/] {detail}".rstrip(), highlight=False)
    raise typer.Exit(_exit_status(result))


def _source_file(path: Path) -> SourceFile:
    data = path.read_bytes()
    try:
        return SourceFile(path=path.name, content=data.decode())
    except UnicodeDecodeError:
        return SourceFile(
            path=path.name, content=base64.b64encode(data).decode(), encoding="base64"
        )


@app.command()
def languages(
    check: Annotated[
        bool, typer.Option("--check", help="Run each language's self-test (hello + stdin echo)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON")] = False,
) -> None:
    """List the languages, their versions and whether their toolchain is installed."""

    async def go() -> tuple[list[Any], dict[str, ExecutionResult | str]]:
        runner = await Runner.create(get_settings())
        outcomes: dict[str, ExecutionResult | str] = {}
        try:
            if check:
                with Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(),
                    console=err,
                    transient=True,
                ) as progress:
                    task = progress.add_task("self-tests", total=len(runner.table.all))
                    for lang in runner.table.all:
                        progress.update(task, description=f"self-test: {lang.name}")
                        missing = lang.missing_toolchain()
                        outcomes[lang.name] = missing or await runner.selftest(lang.name)
                        progress.advance(task)
            return runner.languages(), outcomes
        finally:
            await runner.close()

    infos, outcomes = _run_async(go())
    if as_json:
        rows = []
        for info in infos:
            row = info.model_dump()
            outcome = outcomes.get(info.name)
            if outcome is not None:
                row["selftest"] = outcome if isinstance(outcome, str) else outcome.verdict
            rows.append(row)
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="execbox languages")
        for column in ("name", "aliases", "version", "compiled", "installed"):
            table.add_column(column)
        if check:
            table.add_column("self-test")
        for info in infos:
            cells = [
                info.name,
                ", ".join(info.aliases),
                info.version or "-",
                "yes" if info.compiled else "no",
                "[green]yes[/]" if info.available else "[red]no[/]",
            ]
            if check:
                cells.append(_selftest_cell(outcomes[info.name]))
            table.add_row(*cells)
        Console().print(table)
    failed = [n for n, o in outcomes.items() if isinstance(o, str) or o.verdict != Verdict.OK]
    if failed:
        raise _fail("self-test failed for: " + ", ".join(failed), code=1)


def _selftest_cell(outcome: ExecutionResult | str) -> str:
    if isinstance(outcome, str):
        return f"[red]missing[/] {outcome}"
    if outcome.verdict == Verdict.OK:
        test = outcome.tests[0] if outcome.tests else None
        return f"[green]pass[/] {test.wall_time_ms:.0f} ms" if test else "[green]pass[/]"
    stage = outcome.compile if outcome.verdict == Verdict.COMPILE_ERROR else None
    stage = stage or (outcome.tests[0] if outcome.tests else None)
    detail = (stage.stderr or stage.stdout or stage.message or "")[:80] if stage else ""
    return f"[red]FAIL[/] {outcome.verdict.value} {detail}"


@app.command()
def bench(
    iterations: Annotated[int, typer.Option(help="Runs of each kind")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line")] = False,
) -> None:
    """Measure the sandbox's overhead against running the same program bare.

    Bare `/usr/bin/python3 -c 'print(1+1)'` and `/bin/true` against the same
    commands through the sandbox (warm pool and cold) and through the runner,
    interleaved in one run. Prints medians, p90 and the overhead in ms and as a
    ratio.
    """
    from execbox.benchmark import print_report, run_benchmark

    report = _run_async(run_benchmark(get_settings(), iterations))
    print_report(report, Console())
    if as_json:
        print(json.dumps(report))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            help="Listen beyond loopback without API keys (only behind an authenticating proxy)"
        ),
    ] = False,
) -> None:
    """Start the HTTP service: API, queue and workers in one process (SQLite by default).

    Set EXECBOX_API_KEYS to require keys, EXECBOX_DATABASE_URL for PostgreSQL.
    The playground is at http://HOST:PORT/ and the API docs at /docs.
    """
    from execbox.api.cli import serve as serve_api

    serve_api(host, port, allow_insecure=allow_insecure)


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Jobs run at once (default: EXECBOX_WORKERS, else the CPUs)"),
    ] = None,
) -> None:
    """Take jobs from the Redis queue (scale-out mode) until SIGTERM.

    Needs EXECBOX_REDIS_URL and EXECBOX_DATABASE_URL (PostgreSQL), the same as the API
    servers'. On SIGTERM it takes no new job, lets running ones finish for
    EXECBOX_SHUTDOWN_GRACE_S, and hands the rest back to the queue.
    """
    from execbox.workers.main import run_worker

    run_worker(concurrency)


db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (serve applies them on start too)."""
    from execbox.api.cli import db_upgrade as upgrade

    upgrade()
