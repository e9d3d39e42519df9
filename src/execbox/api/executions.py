"""/v1/executions: submit, wait or stream, read, list, cancel. No execution logic:
validate, hand over to the job service, answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from sse_starlette import EventSourceResponse

from execbox.api.auth import require_api_key
from execbox.api.deps import ServicesDep
from execbox.api.problems import problem_responses
from execbox.api.schemas import Activity, ActivityEntry, ExecutionList
from execbox.api.streaming import execution_events
from execbox.jobs.results import to_result
from execbox.models import ExecutionRequest, ExecutionResult, Status
from execbox.webhooks import CallbackPolicy

router = APIRouter(
    prefix="/v1/executions",
    tags=["executions"],
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401),
)

SSE_SEND_TIMEOUT_S = 60

JobId = Annotated[str, Path(max_length=64, description="The execution's id")]


@router.post(
    "",
    response_model=ExecutionResult,
    responses={
        202: {"model": ExecutionResult, "description": "Queued (wait=false); see Location"},
        **problem_responses(413, 422, 429),
    },
)
async def create_execution(
    request: ExecutionRequest,
    response: Response,
    services: ServicesDep,
    wait: Annotated[
        bool, Query(description="Answer with the result (true) or at once with 202 (false)")
    ] = True,
) -> ExecutionResult:
    """Runs a program. A compile error, a crash or a timeout is a completed execution
    with a verdict, not an HTTP error."""
    services.runner.check(request, local_toolchains=not services.settings.scale_out)
    if request.callback_url is not None:
        CallbackPolicy.from_settings(services.settings).check_url(request.callback_url)
    if not wait:
        # No subscription: nobody waits here (in scale-out mode one costs Redis round trips).
        job = await services.jobs.submit(request, services.language_ref(request.language))
        response.status_code = 202
        response.headers["Location"] = f"/v1/executions/{job.id}"
        return to_result(job)
    return await services.jobs.submit_and_wait(request, services.language_ref(request.language))


@router.get("", response_model=ExecutionList, responses=problem_responses(422))
async def list_executions(
    services: ServicesDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{1,32}$", description="next_cursor of a page")
    ] = None,
) -> ExecutionList:
    """Executions, newest first."""
    jobs = await services.jobs.list(status=status, limit=limit, before=cursor)
    return ExecutionList(
        items=[to_result(job) for job in jobs],
        next_cursor=jobs[-1].id if len(jobs) == limit else None,
    )


@router.get("/{job_id}", response_model=ExecutionResult, responses=problem_responses(404, 422))
async def get_execution(job_id: JobId, services: ServicesDep) -> ExecutionResult:
    return to_result(await services.jobs.get(job_id))


@router.post(
    "/{job_id}/cancel", response_model=ExecutionResult, responses=problem_responses(404, 409, 422)
)
async def cancel_execution(job_id: JobId, services: ServicesDep) -> ExecutionResult:
    """Cancels a queued or running execution (its sandbox is killed). 409 when it
    already finished otherwise."""
    return await services.jobs.cancel(job_id)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `status`, `stdout`, `stderr`, then `result`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(404, 422),
    },
)
async def stream_execution(
    job_id: JobId,
    services: ServicesDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=r"^[0-9]{1,9}$",
            description="Resume after this event id",
        ),
    ] = None,
) -> EventSourceResponse:
    await services.jobs.get(job_id)  # 404 before the stream starts
    return EventSourceResponse(
        execution_events(services.jobs, job_id, int(last_event_id or 0)),
        ping=services.settings.sse_ping_s,
        # A client that stops reading is dropped rather than holding the stream.
        send_timeout=SSE_SEND_TIMEOUT_S,
    )


@router.get(
    "/{job_id}/activity",
    response_model=Activity,
    response_model_exclude_none=True,
    responses=problem_responses(404, 422),
)
async def execution_activity(job_id: JobId, services: ServicesDep) -> Activity:
    """The persisted log: transitions, stages, errors, with their times."""
    job, events = await services.jobs.activity(job_id)
    return Activity(
        id=job.id,
        status=job.status,
        events=[
            ActivityEntry(seq=e.seq, at=e.at, type=e.kind.value, **(e.data or {})) for e in events
        ],
    )
