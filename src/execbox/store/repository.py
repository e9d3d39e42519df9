"""Queries on jobs and their event log. Every change of a job and the events it
produces are written in one transaction, the events numbered in order per job.

The statements of the per-job path (create, get, transition, append, events) are
built once, with bind parameters: SQLAlchemy then compiles each once and finds it
again by the statement's memoized cache key, where a statement built per call is
rebuilt, hashed and its parameters extracted each time, which cost more than the
SQLite work itself.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from execbox.jobs.states import TERMINAL, Status
from execbox.models import ExecutionRequest, Verdict
from execbox.store.db import Connection, Database
from execbox.store.records import EventKind, Job, JobEvent
from execbox.store.schema import job_events, jobs

_INSERT_JOB = jobs.insert()
_INSERT_EVENTS = job_events.insert()
_GET_JOB = jobs.select().where(jobs.c.id == sa.bindparam("job_id"))
# Only while the job is still at the attempt of the writer (see JobService.claim).
_FENCE = jobs.c.attempts == sa.bindparam("fence", type_=sa.Integer)
# The job's event counter, moved past the events a write adds.
_EVENT_SEQ = jobs.c.event_seq + sa.bindparam("added", type_=sa.Integer)
_APPEND = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("job_id"))
    .values(event_seq=_EVENT_SEQ)
    .returning(jobs.c.event_seq)
)
_APPEND_FENCED = _APPEND.where(_FENCE)


def _job(row: sa.Row[Any]) -> Job:
    return Job(
        id=row.id,
        status=Status(row.status),
        language=row.language,
        language_version=row.language_version,
        verdict=Verdict(row.verdict) if row.verdict else None,
        request=ExecutionRequest.model_validate(row.request),
        outcome=row.outcome,
        error_message=row.error_message,
        error_debug_id=row.error_debug_id,
        attempts=row.attempts,
        event_seq=row.event_seq,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        worker_id=row.worker_id,
        heartbeat_at=row.heartbeat_at,
        interactive=row.interactive,
    )


def _event(row: sa.Row[Any]) -> JobEvent:
    return JobEvent(kind=EventKind(row.kind), data=row.data, at=row.at, seq=row.seq)


def _numbered(events: Sequence[JobEvent], last_seq: int) -> list[JobEvent]:
    first = last_seq - len(events) + 1
    return [dataclasses.replace(e, seq=first + i) for i, e in enumerate(events)]


def _one_of(column: sa.Column[Any], values: Collection[str]) -> sa.ColumnElement[bool]:
    # Not IN (...): SQLAlchemy renders an IN list anew at every execution ("expanding"
    # parameters), equalities are compiled once with the statement.
    return sa.or_(*(column == value for value in sorted(values)))


@functools.cache
def _transition_statement(
    expected: frozenset[Status], columns: tuple[str, ...], fenced: bool, new_attempt: bool
) -> sa.Update:
    """The compare-and-set of JobStore.transition, one per shape of call (a handful)."""
    values: dict[str, Any] = {
        name: sa.bindparam(f"set_{name}", type_=jobs.c[name].type) for name in columns
    }
    if new_attempt:
        values["attempts"] = jobs.c.attempts + 1
    query = (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("job_id"))
        .where(_one_of(jobs.c.status, [s.value for s in expected]))
        .values(event_seq=_EVENT_SEQ, **values)
        .returning(*jobs.c)
    )
    return query.where(_FENCE) if fenced else query


@functools.cache
def _events_statement(kinds: frozenset[EventKind] | None) -> sa.Select[Any]:
    query = (
        job_events.select()
        .where(job_events.c.job_id == sa.bindparam("job_id"))
        .where(job_events.c.seq > sa.bindparam("after", type_=sa.Integer))
        .order_by(job_events.c.seq)
    )
    if kinds is not None:
        query = query.where(_one_of(job_events.c.kind, [k.value for k in kinds]))
    return query


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _insert_events(
        self, conn: Connection, job_id: str, events: Sequence[JobEvent]
    ) -> None:
        if events:
            await conn.execute(
                _INSERT_EVENTS,
                [
                    {
                        "job_id": job_id,
                        "seq": e.seq,
                        "kind": e.kind.value,
                        "at": e.at,
                        "data": e.data,
                    }
                    for e in events
                ],
            )

    async def create(self, job: Job, events: Sequence[JobEvent]) -> list[JobEvent]:
        numbered = _numbered(events, len(events))
        async with self.db.write() as conn:
            await conn.execute(
                _INSERT_JOB,
                {
                    "id": job.id,
                    "status": job.status.value,
                    "language": job.language,
                    "language_version": job.language_version,
                    "request": job.request.model_dump(mode="json", exclude_defaults=True),
                    "attempts": job.attempts,
                    "event_seq": len(events),
                    "created_at": job.created_at,
                    "interactive": job.interactive,
                },
            )
            await self._insert_events(conn, job.id, numbered)
        return numbered

    async def get(self, job_id: str) -> Job | None:
        async with self.db.read() as conn:
            row = (await conn.execute(_GET_JOB, {"job_id": job_id})).first()
        return _job(row) if row else None

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> list[Job]:
        """Newest first; ``before`` is the id of the last job of the previous page."""
        query = jobs.select().order_by(jobs.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if before is not None:
            query = query.where(jobs.c.id < before)
        async with self.db.read() as conn:
            return [_job(row) for row in await conn.execute(query)]

    async def transition(
        self,
        job_id: str,
        *,
        expected: Collection[Status],
        status: Status,
        events: Sequence[JobEvent],
        fence: int | None = None,
        new_attempt: bool = False,
        **values: Any,
    ) -> tuple[Job, list[JobEvent]] | None:
        """Moves the job to ``status`` if it is in one of ``expected`` (compare-and-set,
        so two processes never both win), with its events; None if it was not. With
        ``fence``, only if the job is still at that attempt (see JobService.claim);
        ``new_attempt`` counts a new start of the job."""
        values["status"] = status.value
        query = _transition_statement(
            frozenset(expected), tuple(sorted(values)), fence is not None, new_attempt
        )
        params = {f"set_{name}": value for name, value in values.items()}
        params.update(job_id=job_id, added=len(events), fence=fence)
        async with self.db.write() as conn:
            row = (await conn.execute(query, params)).first()
            if row is None:
                return None
            numbered = _numbered(events, row.event_seq)
            await self._insert_events(conn, job_id, numbered)
        return _job(row), numbered

    async def append(
        self, job_id: str, events: Sequence[JobEvent], fence: int | None = None
    ) -> list[JobEvent] | None:
        """Adds events without changing the job's status; None when ``fence`` is given
        and the job is no longer at that attempt."""
        query = _APPEND if fence is None else _APPEND_FENCED
        async with self.db.write() as conn:
            params = {"job_id": job_id, "added": len(events), "fence": fence}
            last_seq = (await conn.execute(query, params)).scalar()
            if last_seq is None:
                return None
            numbered = _numbered(events, last_seq)
            await self._insert_events(conn, job_id, numbered)
        return numbered

    async def events(
        self, job_id: str, *, after: int = 0, kinds: Collection[EventKind] | None = None
    ) -> list[JobEvent]:
        query = _events_statement(None if kinds is None else frozenset(kinds))
        async with self.db.read() as conn:
            rows = await conn.execute(query, {"job_id": job_id, "after": after})
            return [_event(row) for row in rows]

    async def ids(self, status: Status) -> list[str]:
        """Ids of the jobs in ``status``, oldest first."""
        query = sa.select(jobs.c.id).where(jobs.c.status == status.value).order_by(jobs.c.id)
        async with self.db.read() as conn:
            return list((await conn.execute(query)).scalars())

    async def renew_leases(self, worker_id: str, job_ids: Collection[str]) -> list[str]:
        """The heartbeat of a worker's running jobs; returns those still its own."""
        if not job_ids:
            return []
        query = (
            jobs.update()
            .where(
                jobs.c.id.in_(list(job_ids)),
                jobs.c.worker_id == worker_id,
                jobs.c.status == Status.RUNNING.value,
            )
            .values(heartbeat_at=sa.func.now())
            .returning(jobs.c.id)
        )
        async with self.db.write() as conn:
            return list((await conn.execute(query)).scalars())

    async def expired_leases(self, silent_s: float) -> list[Job]:
        """Running jobs whose worker has not renewed their lease for ``silent_s``. Only
        jobs run by a worker (interactive runs belong to their connection, not a lease)."""
        last = sa.func.coalesce(jobs.c.heartbeat_at, jobs.c.started_at)
        cutoff = sa.func.now() - sa.text(f"interval '{float(silent_s)} seconds'")
        query = jobs.select().where(
            jobs.c.status == Status.RUNNING.value, jobs.c.worker_id.is_not(None), last < cutoff
        )
        async with self.db.read() as conn:
            return [_job(row) for row in await conn.execute(query)]

    async def prune(self, finished_before: datetime) -> int:
        """Deletes finished jobs (and their events) older than the cutoff."""
        old = sa.select(jobs.c.id).where(
            jobs.c.status.in_([s.value for s in TERMINAL]), jobs.c.finished_at < finished_before
        )
        async with self.db.write() as conn:
            # Explicit rather than ON DELETE CASCADE, which SQLite only honours per connection.
            await conn.execute(job_events.delete().where(job_events.c.job_id.in_(old)))
            deleted = await conn.execute(jobs.delete().where(jobs.c.id.in_(old)))
        return deleted.rowcount
