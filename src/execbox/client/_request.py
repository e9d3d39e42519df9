"""The one request type of the SDK: what to send, and how to read the answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from execbox.client.errors import TransportError, error_for

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Request(Generic[T]):
    """One call of the HTTP API. ``parse`` reads the answer, raising the typed error
    of an error answer; ``timeout`` None keeps the client's own."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None
    timeout: httpx.Timeout | None = None

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The httpx request, on either kind of httpx client."""
        return http.build_request(
            self.method,
            self.path,
            params=self.params,
            json=self.json,
            content=self.content,
            headers=self.headers,
            timeout=httpx.USE_CLIENT_DEFAULT if self.timeout is None else self.timeout,
        )


def check(response: httpx.Response) -> httpx.Response:
    """Raises the typed error of an error response (its body must have been read)."""
    if response.is_success:
        return response
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    if "retry_after" not in problem and "retry-after" in response.headers:
        problem["retry_after"] = response.headers["retry-after"]
    raise error_for(response.status_code, problem)


def model(cls: type[M]) -> Callable[[httpx.Response], M]:
    """A parser of a JSON answer that is one ``cls``."""
    return lambda response: cls.model_validate_json(check(response).content)


def models(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    """A parser of a JSON answer that is a list of ``cls``."""
    adapter = TypeAdapter(list[cls])  # type: ignore[valid-type]  # cls is a runtime class
    return lambda response: adapter.validate_json(check(response).content)


def content(response: httpx.Response) -> bytes:
    return check(response).content


def nothing(response: httpx.Response) -> None:
    check(response)


def transport_error(exc: Exception) -> TransportError:
    return TransportError(f"cannot reach the execbox server: {exc}")
