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

from execbox.errors import CallerError
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


class ProblemError(CallerError):
    """A problem a route answers with directly (most errors are domain errors that
    carry their own status: see execbox.errors.CallerError)."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self._headers = headers
        self._extra = extra

    @property
    def headers(self) -> dict[str, str] | None:
        return self._headers

    @property
    def extra(self) -> dict[str, Any]:
        return self._extra


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = problem_body(status, detail, **extra)
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


def problem_body(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    """RFC 9457 problem JSON: the body of every error response, and of the ``error``
    message of a WebSocket."""
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }


def problem_of(exc: Exception, where: str) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """What an exception means for the caller: status, problem body and headers. Our own
    failures (anything that is no caller's error) are logged with a debug id."""
    if isinstance(exc, CallerError):
        return exc.status, problem_body(exc.status, str(exc), **exc.extra), exc.headers
    if (dependency := unavailable(exc)) is not None:
        detail = f"{dependency} is unavailable; try again shortly (GET /health tells more)"
        return 503, problem_body(503, detail), {"Retry-After": "5"}
    debug_id = internal_error("unhandled error", path=where)
    detail = "an internal error occurred; the server log has the details"
    return 500, problem_body(500, detail, debug_id=debug_id), None


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem_response(exc.status_code, detail, headers=exc.headers)


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    status, body, headers = problem_of(exc, request.url.path)
    return JSONResponse(
        jsonable_encoder(body), status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Starlette finds the handler of an exception along its MRO: caller errors of every
    layer (execbox.errors.CallerError), an unreachable dependency (503), and the rest
    (500, with a debug id in the log)."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(CallerError, _problem)
    for error in OUTAGE_ERRORS:
        # A handler of its own: the catch-all one's response would close the connection.
        app.add_exception_handler(error, _problem)
    app.add_exception_handler(Exception, _problem)
