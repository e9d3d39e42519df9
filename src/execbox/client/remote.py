"""`execbox run --server URL`: a run through the API, live, for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Literal

from execbox.client._async import AsyncClient
from execbox.client._events import OutputEvent
from execbox.client._interactive import AsyncInteractive
from execbox.client.errors import ExecboxError
from execbox.models import ExecutionRequest, ExecutionResult


async def _forward(source: AsyncIterator[bytes] | None, run: AsyncInteractive) -> None:
    """The terminal's input to the program; then end its stdin, as a pipe would."""
    if source is not None:
        async for chunk in source:
            await run.send(chunk.decode(errors="replace"))
    await run.close_stdin()


async def run_remote(
    server: str,
    request: ExecutionRequest,
    *,
    stdin: AsyncIterator[bytes] | None,
    on_output: Callable[[Literal["stdout", "stderr"], bytes], None],
) -> ExecutionResult:
    """Runs ``request`` on ``server`` over the interactive WebSocket: output goes to
    ``on_output(stream, data)`` as it comes, ``stdin`` (after request.stdin) to the
    program. The API key comes from $EXECBOX_API_KEY. Raises ExecboxError, also when
    the job ended without a verdict (cancelled, or failed on the server's side)."""
    async with AsyncClient(server) as client, client.interactive(request) as run:
        forwarder = asyncio.create_task(_forward(stdin, run))
        try:
            async for event in run:
                if isinstance(event, OutputEvent):
                    on_output(event.stream, event.data)
        finally:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forwarder
    result = run.result
    assert result is not None
    if result.verdict is None:
        why = f": {result.error.message} (debug_id {result.error.debug_id})" if result.error else ""
        raise ExecboxError(f"the execution was {result.status.value}{why}")
    return result
