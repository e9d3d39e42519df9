"""Webhooks: the final result POSTed to the job's ``callback_url``.

Delivery runs beside the job, never inside it: retried with exponential backoff
on network errors, 5xx, 408 and 429, logged when it finally fails, and never
changes the job. Redirects are not followed, so an allowed host cannot bounce
the request to one that is not.

Callbacks reach public addresses only (the server must not become a way into its
own loopback, its private network or a cloud metadata service), unless the admin
names the host in ``EXECBOX_WEBHOOK_INTERNAL_HOSTS``. A URL is checked when it is
submitted (its syntax, the allow-list, an address written literally) and again at
each delivery, after its name is resolved: every address the name resolves to must
be allowed, and the connection goes to one of exactly those addresses, so a name
that resolves differently the second time (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx
import structlog

from execbox.config import Settings
from execbox.errors import CallerError
from execbox.metrics import Metrics
from execbox.models import ExecutionResult

log = structlog.get_logger(__name__)

MAX_URL_LENGTH = 2048
_RETRY_STATUSES = frozenset({408, 429})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Internal, yet public as far as Python's tables go (they vary between versions).
_ALSO_INTERNAL = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT; Alibaba's metadata
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments; Oracle's metadata
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
    ipaddress.ip_network("fec0::/10"),  # deprecated site-local
)


class CallbackUrlError(CallerError, ValueError):
    status = 422


def address_problem(address: IPAddress) -> str | None:
    """Says why a callback may not reach ``address`` (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in prefix for prefix in _NAT64_PREFIXES):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (problem := address_problem(embedded)):
            return problem
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private or any(address in network for network in _ALSO_INTERNAL):
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def _literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a resolver accepts (``127.1``,
    ``2130706433``, ``0x7f.1`` and octal too), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


@dataclass(frozen=True)
class CallbackPolicy:
    """Where callbacks may go: ``allowed_hosts`` (empty: any host) and, beyond
    public addresses, the hosts in ``internal_hosts`` whatever they resolve to."""

    allowed_hosts: tuple[str, ...] = ()
    internal_hosts: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackPolicy:
        return cls(tuple(settings.webhook_host_list), tuple(settings.webhook_internal_host_list))

    def check_url(self, url: str) -> None:
        """Raises CallbackUrlError saying what is wrong with ``url``, as far as can
        be told without resolving its host."""
        if len(url) > MAX_URL_LENGTH:
            raise CallbackUrlError(f"callback_url is longer than {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            host = _normal_host(parts.hostname or "")
            _ = parts.port  # raises on a port that is not a number
            httpx.URL(url)  # what delivery will parse
        except (ValueError, httpx.InvalidURL) as exc:
            raise CallbackUrlError(f"callback_url is not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https"):
            raise CallbackUrlError("callback_url must be an http:// or https:// URL")
        if not host:
            raise CallbackUrlError("callback_url names no host")
        if self.allowed_hosts and not self._matches(host, self.allowed_hosts + self.internal_hosts):
            raise CallbackUrlError(
                f"callback_url host {host!r} is not allowed on this server; allowed: "
                + ", ".join(self.allowed_hosts + self.internal_hosts)
            )
        self.check_host(host)

    def check_host(self, host: str) -> None:
        """Raises CallbackUrlError if ``host`` is internal by its spelling alone: a
        loopback name or an internal address."""
        host = _normal_host(host)
        if self._is_internal_host(host):
            return
        if host == "localhost" or host.endswith(".localhost"):
            raise self._refusal(host, "a loopback name")
        if (address := _literal_address(host)) is not None:
            self.check_addresses(host, [address])

    def check_addresses(self, host: str, addresses: Iterable[IPAddress]) -> None:
        """Raises CallbackUrlError unless ``host`` may be reached at every one of
        ``addresses`` (what its name resolved to)."""
        if self._is_internal_host(_normal_host(host)):
            return
        for address in addresses:
            if (problem := address_problem(address)) is not None:
                raise self._refusal(host, f"{problem} ({address})")

    def _is_internal_host(self, host: str) -> bool:
        return self._matches(host, self.internal_hosts)

    @staticmethod
    def _matches(host: str, patterns: Iterable[str]) -> bool:
        return any(_host_matches(host, pattern) for pattern in patterns)

    @staticmethod
    def _refusal(host: str, what: str) -> CallbackUrlError:
        return CallbackUrlError(
            f"callback_url host {host!r} is {what}: callbacks go to public addresses only, "
            "unless the server's admin lists the host in EXECBOX_WEBHOOK_INTERNAL_HOSTS"
        )


def _normal_host(host: str) -> str:
    return host.lower().removeprefix("[").removesuffix("]").removesuffix(".")


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (once), in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # The scope of a link-local IPv6 address ("%eth0") is cut: such addresses are refused.
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving each host once, checking every address
    against the policy and connecting to a checked address. httpcore starts TLS on
    the returned stream with the URL's host name, so SNI and certificate
    verification are still against the name; the Host header is the URL's too."""

    def __init__(
        self,
        policy: CallbackPolicy,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.policy.check_host(host)
        try:
            addresses = await asyncio.wait_for(self.resolver(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        self.policy.check_addresses(host, addresses)
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host!r} resolves to no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("callbacks do not go to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a CheckedBackend, and no proxy (it would be the
    address checked, not the target)."""

    def __init__(self, backend: CheckedBackend) -> None:
        super().__init__(trust_env=False)
        # httpx does not take a network backend; its pool is replaced by one that has it.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=backend
        )


class Webhooks:
    def __init__(
        self, settings: Settings, metrics: Metrics, backend: CheckedBackend | None = None
    ) -> None:
        self.attempts = settings.webhook_attempts
        self.backoff_s = settings.webhook_backoff_s
        self.secret = settings.webhook_secret
        self.metrics = metrics
        self.policy = CallbackPolicy.from_settings(settings)
        self._client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            transport=CheckedTransport(backend or CheckedBackend(self.policy)),
            trust_env=False,
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
                # Checked again: the admin's lists may have changed since submission.
                self.policy.check_url(url)
                response = await self._client.post(url, content=body, headers=headers)
            except CallbackUrlError as exc:
                # Where the name points is the receiver's choice, made: not retried.
                self.metrics.webhooks.labels("refused").inc()
                log.warning("webhook refused", job_id=result.id, url=url, problem=str(exc))
                return
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
