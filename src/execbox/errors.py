"""The base of errors a caller can act on. Each says what it means over HTTP (its
``status``), so the API maps every one the same way (api/problems.py), whichever
layer raised it."""

from __future__ import annotations

from typing import Any


class CallerError(Exception):
    """The caller asked for something that cannot be done as asked; the message says
    what to change."""

    status: int = 400

    @property
    def detail(self) -> str:
        """What went wrong and what to do about it."""
        return str(self)

    @property
    def headers(self) -> dict[str, str] | None:
        return None

    @property
    def extra(self) -> dict[str, Any]:
        """More members of the problem JSON."""
        return {}
