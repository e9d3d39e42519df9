"""What the API and the workers need of a queue of job ids."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from execbox.errors import CallerError

if TYPE_CHECKING:
    from execbox.store import Job


class QueueFull(CallerError):
    status = 429

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(f"the queue is full ({depth} jobs waiting); try again later")
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class JobQueue(ABC):
    """Job ids waiting for a worker. The job itself lives in the store."""

    @abstractmethod
    async def check_capacity(self) -> None:
        """Raises QueueFull when no more jobs should be accepted. Called before a job is
        persisted, so a refused request leaves nothing behind."""

    @abstractmethod
    async def put(self, job: Job) -> None:
        """Queues a persisted job (by id; a backend may use its limits, e.g. for a timeout)."""

    @abstractmethod
    async def get(self) -> str:
        """The next job id, waiting for one."""

    async def done(self, job_id: str) -> None:
        """The worker that got ``job_id`` is through with it (whatever became of the job).
        Backends that redeliver jobs of lost workers stop watching it here."""
        return None

    @abstractmethod
    async def depth(self) -> int: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raises when the queue cannot take or hand out jobs."""

    async def close(self) -> None:
        return None
