"""Connections into a sandbox's own network namespace, for the preview proxy.

A sandbox has no network: its loopback is its own. The host reaches a server in it
without giving it any route out: one dedicated thread enters the sandbox's network
namespace with setns(), creates a socket there and returns to the host's namespace.
A socket stays in the namespace it was created in, so asyncio can then connect it
to the sandbox's 127.0.0.1 and use it like any other. setns() changes the calling
thread only, hence the single thread of its own (Python 3.11 has no os.setns).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import socket
import typing
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import httpcore

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NamespaceDialer:
    """Opens TCP connections to 127.0.0.1 inside a given network namespace."""

    def __init__(self) -> None:
        self._host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._thread = self._new_thread()

    @staticmethod
    def _new_thread() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="execbox-netns")

    def _socket_in(self, netns_fd: int) -> socket.socket:
        _setns(netns_fd)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(self._host_ns)

    async def connect(self, netns_fd: int, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        thread = self._thread
        try:
            sock = await loop.run_in_executor(thread, self._socket_in, netns_fd)
        except OSError:
            # The thread may be stranded in the sandbox's namespace: never reuse it.
            self._thread = self._new_thread()
            thread.shutdown(wait=False)
            raise
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._thread.shutdown(wait=False)
        os.close(self._host_ns)


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    # httpcore's interface passes timeouts as arguments.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            return await asyncio.wait_for(self._reader.read(max_bytes), timeout)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            self._writer.write(buffer)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def get_extra_info(self, info: str) -> typing.Any:
        return self._writer.get_extra_info(info)


class SandboxNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's way out, into one sandbox: every host name is the sandbox's loopback."""

    def __init__(self, dialer: NamespaceDialer, netns_fd: int) -> None:
        self._dialer = dialer
        self._netns_fd = netns_fd

    async def open(self, port: int, within_s: float | None = None) -> socket.socket:
        try:
            return await asyncio.wait_for(self._dialer.connect(self._netns_fd, port), within_s)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"port {port} did not answer") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"nothing listens on port {port}: {exc}") from exc

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        sock = await self.open(port, timeout)
        reader, writer = await asyncio.open_connection(sock=sock)
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("a sandbox is reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
