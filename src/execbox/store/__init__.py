"""Persistence of jobs and their activity: SQLite by default, PostgreSQL for scale-out."""

from execbox.store.db import Database
from execbox.store.records import ACTIVITY_KINDS, STREAM_KINDS, EventKind, Job, JobEvent, utcnow
from execbox.store.repository import JobStore

__all__ = [
    "ACTIVITY_KINDS",
    "STREAM_KINDS",
    "Database",
    "EventKind",
    "Job",
    "JobEvent",
    "JobStore",
    "utcnow",
]
