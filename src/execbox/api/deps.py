"""Dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from execbox.api.problems import ProblemError
from execbox.config import Settings
from execbox.wiring import Services

_bearer = HTTPBearer(auto_error=False, description="An API key as a Bearer token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")


# async, though they await nothing: FastAPI runs plain functions in a thread pool,
# a thread hop per dependency per request.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _valid(given: str | None, keys: list[str]) -> bool:
    # Compared with every key in constant time, so timing reveals nothing of any key.
    return given is not None and any(
        [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    )


async def require_api_key(
    connection: HTTPConnection,
    settings: SettingsDep,
    # Declared for the OpenAPI document; the check reads the headers itself, so that
    # a wrong credential is refused even when another, valid one comes with it.
    _declared_bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    _declared_key: Annotated[str | None, Security(_api_key)],
) -> None:
    """Without configured keys the API is open (and bound to loopback, see serve).
    Takes any HTTP connection, so WebSocket endpoints call it too."""
    keys = settings.api_key_list
    if not keys:
        return
    presented: list[str | None] = []
    if (authorization := connection.headers.get("authorization")) is not None:
        scheme, _, credentials = authorization.partition(" ")
        presented.append(credentials.strip() if scheme.lower() == "bearer" else None)
    if (api_key := connection.headers.get("x-api-key")) is not None:
        presented.append(api_key)
    if presented and all(_valid(given, keys) for given in presented):
        return
    raise ProblemError(
        401,
        "the API key is not valid"
        if presented
        else "an API key is required: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`",
        headers={"WWW-Authenticate": "Bearer"},
    )
