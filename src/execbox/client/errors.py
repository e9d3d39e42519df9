"""Typed errors of the SDK. An API error carries the server's problem JSON (RFC 9457)."""

from __future__ import annotations

from typing import Any


class ExecboxError(Exception):
    """Anything the SDK raises."""


class TransportError(ExecboxError):
    """The server could not be reached, or the connection broke."""


class APIError(ExecboxError):
    """The server answered with an error: ``status`` and the ``problem`` it sent."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title: str = str(problem.get("title") or status)
        self.detail: str = str(problem.get("detail") or self.title)
        self.debug_id: str | None = problem.get("debug_id")
        message = f"{status} {self.title}: {self.detail}"
        super().__init__(f"{message} (debug_id {self.debug_id})" if self.debug_id else message)


class BadRequestError(APIError):
    """400."""


class AuthenticationError(APIError):
    """401: no API key, or not a valid one."""


class NotFoundError(APIError):
    """404: no such execution."""


class ConflictError(APIError):
    """409: e.g. cancelling an execution that already finished."""


class PayloadTooLargeError(APIError):
    """413."""


class InvalidRequestError(APIError):
    """422: the request cannot run as asked; ``detail`` says what to change."""


class RateLimitError(APIError):
    """429: too busy; retry after ``retry_after`` seconds."""

    @property
    def retry_after(self) -> float | None:
        value = self.problem.get("retry_after")
        return float(value) if value is not None else None


class ServerError(APIError):
    """5xx: the server's fault; quote ``debug_id`` to its operators."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def error_for(status: int, problem: dict[str, Any]) -> APIError:
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, problem)
