"""Where the server is and how to talk to it: base URL, API key, timeouts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
# A synchronous run lasts as long as the program (limits up to minutes, tests many).
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=600.0)
INTERACTIVE_PATH = "/v1/executions/interactive"


@dataclass(frozen=True)
class Config:
    base_url: str
    headers: dict[str, str]

    @classmethod
    def make(cls, server: str | None, api_key: str | None) -> Config:
        """``server`` defaults to $EXECBOX_SERVER, ``api_key`` to $EXECBOX_API_KEY."""
        base_url = (server or os.environ.get("EXECBOX_SERVER") or DEFAULT_SERVER).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("EXECBOX_API_KEY")
        headers = {"User-Agent": "execbox-python"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return cls(base_url, headers)

    def http_options(self, timeout: httpx.Timeout | float | None) -> dict[str, Any]:
        """The arguments of httpx.Client or httpx.AsyncClient."""
        return {
            "base_url": self.base_url,
            "headers": self.headers,
            "timeout": DEFAULT_TIMEOUT if timeout is None else timeout,
        }

    def websocket_url(self) -> str:
        scheme, sep, rest = self.base_url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError(f"the server URL must start with http:// or https://: {self.base_url}")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{INTERACTIVE_PATH}"
