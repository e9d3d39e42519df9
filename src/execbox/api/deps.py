"""Dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from execbox.api.problems import ProblemError
from execbox.config import Settings
from execbox.services import Services

_bearer = HTTPBearer(auto_error=False, description="An API key as a Bearer token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def require_api_key(
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> None:
    """Without configured keys the API is open (and bound to loopback, see serve)."""
    keys = settings.api_key_list
    if not keys:
        return
    given = bearer.credentials if bearer else api_key
    # Compare with every key in constant time, so timing reveals nothing of any key.
    if given is not None and any(
        [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    ):
        return
    raise ProblemError(
        401,
        "an API key is required: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`"
        if given is None
        else "the API key is not valid",
        headers={"WWW-Authenticate": "Bearer"},
    )
