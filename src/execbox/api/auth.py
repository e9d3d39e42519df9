"""API keys: one check for every front door (HTTP routes, WebSockets, the preview
proxy), over Starlette's HTTPConnection, which both requests and WebSockets are."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from execbox.config import Settings
from execbox.errors import CallerError

# Browsers cannot set headers on a WebSocket; those endpoints accept the key here too.
QUERY_PARAM = "api_key"

_bearer = HTTPBearer(auto_error=False, description="An API key as a Bearer token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")


class Unauthenticated(CallerError):
    """No valid API key came with a request that needs one."""

    status = 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


def _valid(given: str, keys: list[str]) -> bool:
    # Compared with every key in constant time, so timing reveals nothing of any key.
    return any([hmac.compare_digest(given.encode(), key.encode()) for key in keys])


def presented_keys(connection: HTTPConnection, *, allow_query: bool) -> list[str | None]:
    """Every credential the connection presents (None for a non-Bearer Authorization)."""
    presented: list[str | None] = []
    if (authorization := connection.headers.get("authorization")) is not None:
        scheme, _, credentials = authorization.partition(" ")
        presented.append(credentials.strip() if scheme.lower() == "bearer" else None)
    if (api_key := connection.headers.get("x-api-key")) is not None:
        presented.append(api_key)
    if allow_query and (query_key := connection.query_params.get(QUERY_PARAM)) is not None:
        presented.append(query_key)
    return presented


def authenticate(connection: HTTPConnection, keys: list[str], *, allow_query: bool = False) -> None:
    """Raises Unauthenticated unless the API is open (no keys configured: it is then
    bound to loopback, see serve) or every credential presented is one of ``keys``: a
    wrong credential is refused even when a valid one comes with it."""
    if not keys:
        return
    presented = presented_keys(connection, allow_query=allow_query)
    if presented and all(given is not None and _valid(given, keys) for given in presented):
        return
    raise Unauthenticated(
        "the API key is not valid"
        if presented
        else "an API key is required: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`"
    )


async def require_api_key(
    connection: HTTPConnection,
    # Declared for the OpenAPI document; authenticate reads the headers itself.
    _declared_bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    _declared_key: Annotated[str | None, Security(_api_key)],
) -> None:
    """The dependency of every /v1 HTTP route."""
    settings: Settings = connection.app.state.settings
    authenticate(connection, settings.api_key_list)


ApiKey = Annotated[None, Depends(require_api_key)]
