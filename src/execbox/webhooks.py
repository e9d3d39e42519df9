"""Webhooks: the final result POSTed to the job's ``callback_url``.

Delivery runs beside the job, never inside it: retried with exponential backoff
on network errors, 5xx, 408 and 429, logged when it finally fails, and never
changes the job. Redirects are not followed, so an allowed host cannot bounce
the request to one that is not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from urllib.parse import urlsplit

import httpx
import structlog

from execbox.config import Settings
from execbox.errors import CallerError
from execbox.metrics import Metrics
from execbox.models import ExecutionResult

log = structlog.get_logger(__name__)

MAX_URL_LENGTH = 2048
_RETRY_STATUSES = frozenset({408, 429})


class CallbackUrlError(CallerError, ValueError):
    status = 422


def check_callback_url(url: str, allowed_hosts: list[str]) -> None:
    """Raises CallbackUrlError saying what is wrong with ``url``."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackUrlError(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        raise CallbackUrlError(f"callback_url is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise CallbackUrlError("callback_url must be an http:// or https:// URL")
    if not host:
        raise CallbackUrlError("callback_url names no host")
    if allowed_hosts and not any(_host_matches(host, allowed) for allowed in allowed_hosts):
        raise CallbackUrlError(
            f"callback_url host {host!r} is not allowed on this server; allowed: "
            + ", ".join(allowed_hosts)
        )


def _host_matches(host: str, allowed: str) -> bool:
    if allowed.startswith("*."):
        return host.endswith(allowed[1:])
    return host == allowed


class Webhooks:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.attempts = settings.webhook_attempts
        self.backoff_s = settings.webhook_backoff_s
        self.secret = settings.webhook_secret
        self.metrics = metrics
        self._client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            headers={"user-agent": "execbox-webhook"},
        )
        self._deliveries: set[asyncio.Task[None]] = set()

    def send(self, url: str, result: ExecutionResult) -> None:
        """Starts delivering; returns at once."""
        task = asyncio.create_task(self._deliver(url, result))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, result: ExecutionResult) -> None:
        body = result.model_dump_json().encode()
        headers = {"content-type": "application/json", "x-execbox-event": "execution.finished"}
        if self.secret:
            digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["x-execbox-signature"] = f"sha256={digest}"
        problem = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self._client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    self.metrics.webhooks.labels("delivered").inc()
                    log.info("webhook delivered", job_id=result.id, attempt=attempt)
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRY_STATUSES:
                    break  # the receiver refuses this request; sending it again won't help
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        self.metrics.webhooks.labels("failed").inc()
        log.warning("webhook failed", job_id=result.id, url=url, problem=problem, attempts=attempt)

    async def close(self, grace_s: float) -> None:
        """Gives deliveries in flight ``grace_s`` to end, then drops them."""
        if self._deliveries:
            _, late = await asyncio.wait(set(self._deliveries), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._client.aclose()
