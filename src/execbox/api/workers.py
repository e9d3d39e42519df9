"""GET /v1/workers: the live workers, wherever they run."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from execbox.api.auth import require_api_key
from execbox.api.deps import ServicesDep
from execbox.api.problems import problem_responses
from execbox.workers.registry import WorkerInfo

router = APIRouter(
    tags=["operations"], dependencies=[Depends(require_api_key)], responses=problem_responses(401)
)


@router.get("/v1/workers", response_model=list[WorkerInfo], responses=problem_responses(503))
async def workers(services: ServicesDep) -> list[WorkerInfo]:
    """Workers that sent a heartbeat within the last lease (EXECBOX_LEASE_S): host,
    concurrency, the executions they run, version and languages. In embedded mode,
    the worker pool of this server."""
    return await services.registry.live()
