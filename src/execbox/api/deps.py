"""The services and settings routers depend on."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer

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
