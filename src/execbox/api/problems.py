"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from execbox.jobs.service import JobNotFound
from execbox.jobs.states import IllegalTransition
from execbox.logging import internal_error
from execbox.outage import OUTAGE_ERRORS, unavailable

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="A URI naming the kind of problem")
    title: str = Field(..., description="The HTTP status phrase")
    status: int
    detail: str = Field(..., description="What went wrong and what to do about it")
    debug_id: str | None = Field(None, description="For 5xx: quote it to the operators")


class ProblemError(Exception):
    """Raised by routes to answer with a problem."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = detail
    body.update(extra)
    return JSONResponse(
        jsonable_encoder(body), status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (see ``use_problem_media_type``)."""
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }


def use_problem_media_type(schema: dict[str, Any]) -> dict[str, Any]:
    """Declares every error response of the OpenAPI document as problem JSON, which
    is what the handlers below send (FastAPI would say application/json), and the 401
    of every operation that takes an API key."""
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if operation.get("security"):  # behind require_api_key, whichever router
                responses.setdefault("401", {"description": HTTPStatus(401).phrase})
            for code, response in responses.items():
                if code[0] in "45":
                    response["content"] = {PROBLEM_MEDIA_TYPE: problem}
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "request"


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{_location(tuple(e['loc']))}: {e['msg']}" for e in errors)
    return problem_response(422, detail or "invalid request", errors=errors)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem_response(exc.status_code, detail, headers=exc.headers)


async def _problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extra)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return problem_response(404, f"no execution with id {exc}")


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return problem_response(409, str(exc))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    debug_id = internal_error("unhandled error", path=request.url.path)
    return problem_response(
        500, "an internal error occurred; the server log has the details", debug_id=debug_id
    )


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 when Redis or the database is away (a handler of its own: the catch-all
    one's response would close the connection)."""
    dependency = unavailable(exc)
    if dependency is None:
        return await _internal(request, exc)
    return problem_response(
        503,
        f"{dependency} is unavailable; try again shortly (GET /health tells more)",
        headers={"Retry-After": "5"},
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ProblemError, _problem)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(IllegalTransition, _conflict)
    for error in OUTAGE_ERRORS:
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(Exception, _internal)
