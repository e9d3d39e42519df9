"""`execbox serve` and `execbox db upgrade`, as plain functions for the CLI to call."""

from __future__ import annotations

import asyncio
import ipaddress

import uvicorn

from execbox.api.app import create_app
from execbox.config import Settings, get_settings
from execbox.logging import configure_logging
from execbox.store import Database


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bound_host_patterns(host: str) -> list[str]:
    """The Host pattern naming ``host`` as clients write it (none for a wildcard
    address, which names no host)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [host.lower()]
    if address.is_unspecified:
        return []
    return [f"[{address}]" if address.version == 6 else str(address)]


def check_bind(host: str, settings: Settings, allow_insecure: bool) -> None:
    """Refuses to serve an open API beyond this machine unless told to."""
    if settings.api_key_list or allow_insecure or settings.allow_insecure or is_loopback(host):
        return
    raise SystemExit(
        f"refusing to serve on {host} without API keys: anyone who can reach it could run "
        "code here. Set EXECBOX_API_KEYS=key1,key2 (clients send `Authorization: Bearer "
        "KEY`), or pass --allow-insecure (EXECBOX_ALLOW_INSECURE=1) if a proxy in front "
        "authenticates."
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allow_insecure: bool = False,
    settings: Settings | None = None,
) -> None:
    """Runs the API with the embedded queue and workers until SIGINT/SIGTERM."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    check_bind(host, settings, allow_insecure)
    config = uvicorn.Config(
        create_app(settings, extra_hosts=bound_host_patterns(host)),
        host=host,
        port=port,
        # The sandbox's pipe handling relies on the standard loop's transports: uvloop's
        # hand the fd number to libuv, which closes it while the file object we passed
        # closes it again (a stray close of whatever socket reused the number).
        loop="asyncio",
        log_config=None,  # our structlog setup renders uvicorn's logs too
        access_log=False,  # RequestContext logs requests, with their ids
        # Requests still open this long after SIGTERM are cut (SSE streams end at once).
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    uvicorn.Server(config).run()


def db_upgrade(settings: Settings | None = None) -> None:
    """Applies the migrations (serve also does on start)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    async def upgrade() -> None:
        db = Database(settings.database, settings.database_schema)
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(upgrade())
