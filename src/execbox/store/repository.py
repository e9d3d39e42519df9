"""Queries on jobs and their event log. Every change of a job and the events it
produces are written in one transaction, the events numbered in order per job."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from execbox.models import ExecutionRequest, Status, Verdict
from execbox.store.db import Connection, Database
from execbox.store.records import EventKind, Job, JobEvent
from execbox.store.schema import job_events, jobs

TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


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
    )


def _event(row: sa.Row[Any]) -> JobEvent:
    return JobEvent(kind=EventKind(row.kind), data=row.data, at=row.at, seq=row.seq)


def _fenced(fence: int | None) -> list[sa.ColumnElement[bool]]:
    return [] if fence is None else [jobs.c.attempts == fence]


def _numbered(events: Sequence[JobEvent], last_seq: int) -> list[JobEvent]:
    first = last_seq - len(events) + 1
    return [dataclasses.replace(e, seq=first + i) for i, e in enumerate(events)]


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _insert_events(
        self, conn: Connection, job_id: str, events: Sequence[JobEvent]
    ) -> None:
        if events:
            await conn.execute(
                job_events.insert(),
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
                jobs.insert().values(
                    id=job.id,
                    status=job.status.value,
                    language=job.language,
                    language_version=job.language_version,
                    request=job.request.model_dump(mode="json", exclude_defaults=True),
                    attempts=job.attempts,
                    event_seq=len(events),
                    created_at=job.created_at,
                )
            )
            await self._insert_events(conn, job.id, numbered)
        return numbered

    async def get(self, job_id: str) -> Job | None:
        async with self.db.read() as conn:
            row = (await conn.execute(jobs.select().where(jobs.c.id == job_id))).first()
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
        **values: Any,
    ) -> tuple[Job, list[JobEvent]] | None:
        """Moves the job to ``status`` if it is in one of ``expected`` (compare-and-set,
        so two processes never both win), with its events; None if it was not. With
        ``fence``, only if the job is still at that attempt (see JobService.claim)."""
        query = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status.in_([s.value for s in expected]))
            .where(*_fenced(fence))
            .values(status=status.value, event_seq=jobs.c.event_seq + len(events), **values)
            .returning(*jobs.c)
        )
        async with self.db.write() as conn:
            row = (await conn.execute(query)).first()
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
        query = (
            jobs.update()
            .where(jobs.c.id == job_id, *_fenced(fence))
            .values(event_seq=jobs.c.event_seq + len(events))
            .returning(jobs.c.event_seq)
        )
        async with self.db.write() as conn:
            last_seq = (await conn.execute(query)).scalar()
            if last_seq is None:
                return None
            numbered = _numbered(events, last_seq)
            await self._insert_events(conn, job_id, numbered)
        return numbered

    async def events(
        self, job_id: str, *, after: int = 0, kinds: Collection[EventKind] | None = None
    ) -> list[JobEvent]:
        query = (
            job_events.select()
            .where(job_events.c.job_id == job_id, job_events.c.seq > after)
            .order_by(job_events.c.seq)
        )
        if kinds is not None:
            query = query.where(job_events.c.kind.in_([k.value for k in kinds]))
        async with self.db.read() as conn:
            return [_event(row) for row in await conn.execute(query)]

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
