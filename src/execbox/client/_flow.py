"""Operations written once for both clients, in the sans-I/O idiom of httpx's auth
flows.

An operation is a *flow*: a generator that yields the requests it needs, gets
their parsed answers back, and returns its result. ``@operation`` makes a flow a
method that runs it on the handle's transport: at once on a sync handle, as a
coroutine on an async one. ``@event_stream`` does the same for a method that
opens an event stream: an iterator, or an async iterator. A transport is a
client: it has ``_send`` and ``_stream`` and nothing else of this SDK's logic."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from types import MethodType
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

from execbox.client._events import Event, EventStream
from execbox.client._request import Request

P = ParamSpec("P")
T = TypeVar("T")
TransportT = TypeVar("TransportT")


class SyncTransport(Protocol):
    """What a sync client does for its handles: one request, or one event stream."""

    def _send(self, request: Request[T]) -> T: ...

    def _stream(self, request: Request[EventStream]) -> Iterator[Event]: ...


class AsyncTransport(Protocol):
    """The same, on asyncio."""

    async def _send(self, request: Request[T]) -> T: ...

    def _stream(self, request: Request[EventStream]) -> AsyncIterator[Event]: ...


@dataclass(frozen=True)
class Drain:
    """A step of a flow: read an event stream to its end (its observer sees each event)."""

    request: Request[EventStream]


Step = Request[Any] | Drain
Flow = Generator[Step, Any, T]


def send(request: Request[T]) -> Flow[T]:
    """``answer = yield from send(request)``: the parsed answer, typed."""
    answer: T = yield request
    return answer


def drain(request: Request[EventStream]) -> Flow[None]:
    yield Drain(request)


def run_sync(flow: Flow[T], transport: SyncTransport) -> T:
    try:
        step = next(flow)
        while True:
            if isinstance(step, Drain):
                for _ in transport._stream(step.request):
                    pass
                step = flow.send(None)
            else:
                step = flow.send(transport._send(step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]  # the flow returns its T


async def run_async(flow: Flow[T], transport: AsyncTransport) -> T:
    try:
        step = next(flow)
        while True:
            if isinstance(step, Drain):
                async for _ in transport._stream(step.request):
                    pass
                step = flow.send(None)
            else:
                step = flow.send(await transport._send(step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]  # the flow returns its T


class Handle(Generic[TransportT]):
    """Anything whose operations run on a transport: a client, or a handle on a job,
    a sandbox, its files or its commands."""

    def __init__(self, transport: TransportT) -> None:
        self._transport = transport


class SyncHandle(Handle[SyncTransport]):
    """A handle whose operations return their results."""


class AsyncHandle(Handle[AsyncTransport]):
    """A handle whose operations return coroutines."""


def _described_as(template: Callable[..., Any], method: Callable[..., Any]) -> None:
    """Gives a generated method the name, docstring and parameters of the function
    it runs, but not its return annotation (a flow's, not the method's)."""
    functools.update_wrapper(method, template)
    signature = inspect.signature(template).replace(return_annotation=inspect.Signature.empty)
    method.__dict__["__signature__"] = signature


class operation(Generic[P, T]):  # lower case: a decorator, like property
    """Makes a flow a method: sync on a SyncHandle, async on an AsyncHandle."""

    def __init__(self, flow: Callable[Concatenate[Any, P], Flow[T]]) -> None:
        self.flow = flow
        self.__doc__ = flow.__doc__

        def run(handle: SyncHandle, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return run_sync(flow(handle, *args, **kwargs), handle._transport)

        async def arun(handle: AsyncHandle, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return await run_async(flow(handle, *args, **kwargs), handle._transport)

        _described_as(flow, run)
        _described_as(flow, arun)
        self._run, self._arun = run, arun

    def __repr__(self) -> str:
        return f"operation {self.flow.__name__}{inspect.signature(self._run)}"

    @overload
    def __get__(self, handle: None, owner: type) -> Self: ...
    @overload
    def __get__(self, handle: SyncHandle, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, handle: AsyncHandle, owner: type | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, handle: Handle[Any] | None, owner: type | None = None) -> Any:
        if handle is None:
            return self
        return MethodType(self._arun if isinstance(handle, AsyncHandle) else self._run, handle)


class event_stream(Generic[P]):  # lower case: a decorator, like property
    """Makes a function that builds a stream's request a method that streams its
    events: an iterator on a SyncHandle, an async iterator on an AsyncHandle."""

    def __init__(self, open_stream: Callable[Concatenate[Any, P], Request[EventStream]]) -> None:
        self.open = open_stream
        self.__doc__ = open_stream.__doc__

        def stream(handle: Handle[Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
            return handle._transport._stream(open_stream(handle, *args, **kwargs))

        _described_as(open_stream, stream)
        self._stream = stream

    def __set_name__(self, owner: type, name: str) -> None:
        self._stream.__name__ = name  # the method's name, not the request builder's
        self._stream.__qualname__ = f"{owner.__qualname__}.{name}"

    def __repr__(self) -> str:
        return f"event stream {self._stream.__name__}{inspect.signature(self._stream)}"

    @overload
    def __get__(self, handle: None, owner: type) -> Self: ...
    @overload
    def __get__(
        self, handle: SyncHandle, owner: type | None = None
    ) -> Callable[P, Iterator[Event]]: ...
    @overload
    def __get__(
        self, handle: AsyncHandle, owner: type | None = None
    ) -> Callable[P, AsyncIterator[Event]]: ...
    def __get__(self, handle: Handle[Any] | None, owner: type | None = None) -> Any:
        return self if handle is None else MethodType(self._stream, handle)
