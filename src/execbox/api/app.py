"""The FastAPI application: routers, middleware, problem handlers, and the services
started and stopped with it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from execbox import playground
from execbox.api import executions, interactive, previews, sandboxes, system, workers
from execbox.api.middleware import (
    BodyLimit,
    RequestContext,
    TrustedHosts,
    WebSocketOrigins,
    trusted_hosts,
)
from execbox.api.problems import install_problem_handlers, use_problem_media_type
from execbox.config import Settings
from execbox.sandboxes.settings import SandboxSettings
from execbox.wiring import Services


def create_app(settings: Settings, extra_hosts: Iterable[str] = ()) -> FastAPI:
    """The app; besides the configured ones, it answers to ``extra_hosts`` (Host
    patterns such as the bound host or a host-routed preview domain's ``*.domain``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await Services.start(settings)
        try:
            async with sandboxes.running(app, app.state.services):
                yield
        finally:
            await app.state.services.stop()

    app = FastAPI(
        title="execbox",
        version=version("execbox"),
        description="Runs untrusted code in many languages, isolated.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(executions.router)
    app.include_router(system.router)
    app.include_router(workers.router)
    app.include_router(interactive.router)
    app.include_router(sandboxes.router)
    app.include_router(previews.router)
    app.include_router(playground.router)
    app.mount("/playground", playground.static_files(), name="playground")
    install_problem_handlers(app)
    # Outermost last: CORS answers preflights before anything else runs.
    # Preview hosts are the apps' whatever the path: no route of the API is reached
    # there (inside the body cap and the request log, like the path form).
    preview_domain = SandboxSettings().preview_domain
    app.add_middleware(previews.PreviewHosts, domain=preview_domain)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_kb << 10, exempt=sandboxes.STREAMED_UPLOADS
    )
    app.add_middleware(WebSocketOrigins, allowed_origins=settings.cors_origin_list)
    preview_hosts = [f"*.{preview_domain}"] if preview_domain else []
    app.add_middleware(
        TrustedHosts, allowed_hosts=trusted_hosts(settings, [*extra_hosts, *preview_hosts])
    )
    app.add_middleware(RequestContext)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["*"],
            expose_headers=["Location", "Retry-After", "X-Request-ID", "X-Next-Cursor"],
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = use_problem_media_type(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
