"""Checkpoints of the SQLite write-ahead log, taken in a thread.

A checkpoint copies the log back into the database file and fsyncs both. SQLite's
automatic one runs inside the commit that crosses its threshold, which in execbox
is a commit on the event loop's thread: every few dozen jobs it stalled the loop,
and every request waiting on it, for several milliseconds (up to ~20 ms measured on
this machine's ext4 disk). So the serving connection turns it off
(``wal_autocheckpoint=0``, see db.py) and this takes one every CHECKPOINT_EVERY
write transactions, on a connection of its own in a worker thread: the sqlite3
module releases the GIL while SQLite works, and a PASSIVE checkpoint does not hold
up the writer, whose commits go on appending to the log meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import structlog

log = structlog.get_logger(__name__)

# Write transactions between checkpoints: a job's writes touch a few pages each, so
# this keeps the log near SQLite's own threshold (1000 pages).
CHECKPOINT_EVERY = 200


class WalCheckpointer:
    def __init__(self, path: str) -> None:
        self._path = path
        self._writes = 0
        self._running: asyncio.Future[None] | None = None

    def written(self) -> None:
        """Counts a committed write transaction; starts a checkpoint when one is due."""
        self._writes += 1
        if self._writes >= CHECKPOINT_EVERY and self._running is None:
            self._writes = 0
            self._running = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
            self._running.add_done_callback(self._done)

    def _checkpoint(self) -> None:
        with contextlib.closing(sqlite3.connect(self._path, timeout=5)) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _done(self, future: asyncio.Future[None]) -> None:
        self._running = None
        if not future.cancelled() and (error := future.exception()) is not None:
            # The log only grows until the next one; nothing is lost.
            log.warning("WAL checkpoint failed", error=f"{type(error).__name__}: {error}")

    async def close(self) -> None:
        """Waits for a checkpoint in flight (a thread cannot be stopped)."""
        if self._running is not None:
            await asyncio.wait([self._running])
