"""The web playground: a static page (built from web/ by esbuild, committed) served
at ``/``. Everything it loads comes from here; nothing from a CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    # no-cache: the page names its assets without hashes, so it must be revalidated.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """Mounted at /playground: the bundle, its styles and fonts."""
    return StaticFiles(directory=STATIC_DIR)
