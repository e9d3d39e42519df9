"""Languages, health and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from execbox.api.auth import require_api_key
from execbox.api.deps import ServicesDep
from execbox.api.problems import problem_response, problem_responses
from execbox.api.schemas import Health
from execbox.languages import LanguageInfo
from execbox.wiring import Services

router = APIRouter()

HEALTH_CHECK_TIMEOUT_S = 10
SANDBOX_CHECK_TTL_S = 5


@router.get(
    "/v1/languages",
    response_model=list[LanguageInfo],
    tags=["languages"],
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401),
)
async def languages(services: ServicesDep) -> list[LanguageInfo]:
    return services.runner.languages()


async def _queue_ok(services: Services) -> None:
    await services.queue.ping()
    if services.workers is not None and not services.workers.alive:
        raise RuntimeError("the worker pool has stopped")


class _SharedCheck:
    """A check whose outcome is reused for ``ttl_s``, and shared by callers that come
    while it runs: /health needs no key, and must not let anyone who can reach it
    start sandboxes at will."""

    def __init__(self, check: Callable[[], Awaitable[None]], ttl_s: float) -> None:
        self._check = check
        self._ttl_s = ttl_s
        self._started = -ttl_s
        self._task: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        now = time.monotonic()
        if self._task is None or (self._task.done() and now - self._started >= self._ttl_s):
            self._started = now
            self._task = asyncio.ensure_future(self._check())
        await asyncio.shield(self._task)


def _checks(request: Request, services: Services) -> dict[str, Callable[[], Awaitable[None]]]:
    state = request.app.state
    if getattr(state, "sandbox_check", None) is None:
        state.sandbox_check = _SharedCheck(services.runner.sandbox_check, SANDBOX_CHECK_TTL_S)
    return {
        "database": services.db.ping,
        "queue": lambda: _queue_ok(services),
        "sandbox": state.sandbox_check,
    }


async def _run_check(check: Callable[[], Awaitable[None]]) -> str:
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_S):
            await check()
    except TimeoutError:
        return f"failed: no answer within {HEALTH_CHECK_TIMEOUT_S} s"
    except Exception as exc:
        return f"failed: {exc}"
    return "ok"


@router.get("/health", response_model=Health, tags=["operations"], responses=problem_responses(503))
async def health(request: Request, services: ServicesDep) -> Health | JSONResponse:
    """The database, the queue and the sandbox (a trivial program is run, at most
    every few seconds)."""
    checks = _checks(request, services)
    outcomes = await asyncio.gather(*(_run_check(check) for check in checks.values()))
    results = dict(zip(checks, outcomes, strict=True))
    failing = [name for name, outcome in results.items() if outcome != "ok"]
    if failing:
        detail = "; ".join(f"{name} {results[name]}" for name in failing)
        return problem_response(503, f"unhealthy: {detail}", checks=results)
    return Health(status="ok", checks=results)


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    services.metrics.queue_depth.set(await services.queue.depth())
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
