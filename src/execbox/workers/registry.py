"""Which workers are alive, for GET /v1/workers.

In scale-out mode each worker process writes its entry to Redis with every
heartbeat, with a time to live of one lease: an entry that is not renewed (the
worker died or lost Redis) vanishes by itself. SAQ's worker registry stores it
(``worker_info``), so SAQ's own tools see the same workers. In embedded mode the
one worker pool of the process is the list.
"""

from __future__ import annotations

import math
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version

from pydantic import BaseModel, Field
from saq.queue.redis import RedisQueue as SaqQueue

from execbox.jobs.execution import JobRunner
from execbox.models import LanguageRef
from execbox.runner import Runner
from execbox.store import utcnow
from execbox.workers.pool import WorkerPool


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    concurrency: int
    running_jobs: list[str] = Field(description="Ids of the executions it runs now")
    version: str = Field(description="execbox's version")
    languages: list[LanguageRef] = Field(description="Languages whose toolchain it has")
    started_at: datetime
    seen_at: datetime = Field(description="Its last heartbeat")


def new_worker_id() -> str:
    """Host, pid and a random part (no colon: SAQ splits its registry keys on them)."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}".replace(":", "_")


@dataclass
class LocalWorker:
    """Describes a worker pool of this process."""

    id: str
    pool: WorkerPool
    job_runner: JobRunner
    runner: Runner
    started_at: datetime = field(default_factory=utcnow)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.pool.concurrency,
            running_jobs=self.job_runner.running_jobs,
            version=version("execbox"),
            languages=[
                LanguageRef(name=lang.name, version=lang.version)
                for lang in self.runner.languages()
                if lang.available
            ],
            started_at=self.started_at,
            seen_at=utcnow(),
        )


class WorkerRegistry(ABC):
    @abstractmethod
    async def live(self) -> list[WorkerInfo]: ...


class LocalRegistry(WorkerRegistry):
    def __init__(self, worker: LocalWorker | None) -> None:
        self.worker = worker

    async def live(self) -> list[WorkerInfo]:
        return [self.worker.info()] if self.worker else []


class RedisRegistry(WorkerRegistry):
    def __init__(self, saq: SaqQueue, ttl_s: float) -> None:
        self.saq = saq
        self.ttl_s = max(1, math.ceil(ttl_s))

    async def announce(self, worker: LocalWorker) -> None:
        info = worker.info().model_dump(mode="json")
        await self.saq.worker_info(
            worker.id, queue_key=self.saq.name, metadata=info, ttl=self.ttl_s
        )

    async def withdraw(self, worker: LocalWorker) -> None:
        """Gone at once rather than when its entry expires (a graceful stop)."""
        await self.saq.redis.delete(self.saq.namespace(f"worker_info:{worker.id}"))

    async def live(self) -> list[WorkerInfo]:
        workers = (await self.saq.info())["workers"]
        entries = [WorkerInfo.model_validate(w["metadata"]) for w in workers.values()]
        return sorted(entries, key=lambda w: (w.host, w.started_at))
