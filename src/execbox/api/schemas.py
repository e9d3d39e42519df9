"""Response bodies of the API beyond the execution result itself."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from execbox.models import ExecutionResult, Status


class ExecutionList(BaseModel):
    items: list[ExecutionResult]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next (older) page; null on the last page"
    )


class ActivityEntry(BaseModel):
    seq: int = Field(..., description="Position in the job's event log (the SSE event id)")
    at: datetime
    type: Literal["status", "stage", "error"]
    status: Status | None = Field(None, description="For type=status: the new status")
    reason: str | None = Field(None, description="Why the transition, when not the usual")
    stage: str | None = Field(None, description="For type=stage: compiling, running, test N")
    message: str | None = Field(None, description="For type=error")
    debug_id: str | None = None


class Activity(BaseModel):
    id: str
    status: Status
    events: list[ActivityEntry]


class Health(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str] = Field(..., description="database, queue, sandbox: ok")
