"""A job as the execution result callers see (DESIGN.md §3, "Execution result")."""

from __future__ import annotations

from execbox.models import ErrorInfo, ExecutionResult, LanguageRef
from execbox.store import Job


def to_result(job: Job) -> ExecutionResult:
    outcome = job.outcome or {}
    return ExecutionResult(
        id=job.id,
        status=job.status,
        language=LanguageRef(name=job.language, version=job.language_version),
        verdict=job.verdict,
        compile=outcome.get("compile"),
        run=outcome.get("run"),
        tests=outcome.get("tests"),
        error=(
            ErrorInfo(message=job.error_message or "", debug_id=job.error_debug_id)
            if job.error_debug_id
            else None
        ),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
