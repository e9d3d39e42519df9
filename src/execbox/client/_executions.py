"""Executions, written once for both clients: running, submitting and following
jobs, the job handle, and the languages the server knows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from pydantic import TypeAdapter

from execbox.client._config import Config
from execbox.client._events import Event, EventStream, ResultEvent, stream_request
from execbox.client._flow import (
    AsyncHandle,
    AsyncTransport,
    Flow,
    Handle,
    SyncHandle,
    SyncTransport,
    TransportT,
    drain,
    event_stream,
    operation,
    send,
)
from execbox.client._interactive import InteractiveHandle
from execbox.client._request import Request, check, model
from execbox.jobs.states import TERMINAL
from execbox.languages import LanguageInfo
from execbox.models import ExecutionRequest, ExecutionResult, Limits, SourceFile, TestCase

JobT = TypeVar("JobT", bound="JobCore[Any]")
InteractiveT = TypeVar("InteractiveT", bound=InteractiveHandle)

_LANGUAGES = TypeAdapter(list[LanguageInfo])


class RunOptions(TypedDict, total=False):
    """Everything of an execution request besides the language and the code."""

    version: str
    files: Sequence[SourceFile | Mapping[str, str]]
    stdin: str
    args: Sequence[str]
    env: Mapping[str, str]
    tests: Sequence[TestCase | Mapping[str, Any]]
    limits: Limits | Mapping[str, Any]
    compile_limits: Limits | Mapping[str, Any]
    network: bool
    callback_url: str


def execution_body(
    language: str | ExecutionRequest, code: str | None, options: RunOptions
) -> dict[str, Any]:
    """The request body, checked here first so that a mistake raises at once
    (pydantic's ValidationError, a ValueError) without a round trip."""
    if isinstance(language, ExecutionRequest):
        request = language.model_copy(update=dict(options))
    else:
        request = ExecutionRequest.model_validate({"language": language, "code": code, **options})
    return request.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


def submit_request(body: dict[str, Any], *, wait: bool) -> Request[ExecutionResult]:
    params = {"wait": "true" if wait else "false"}
    return Request("POST", "/v1/executions", model(ExecutionResult), params=params, json=body)


def job_request(method: str, job_id: str, *action: str) -> Request[ExecutionResult]:
    return Request(method, "/".join(["/v1/executions", job_id, *action]), model(ExecutionResult))


def languages_request() -> Request[list[LanguageInfo]]:
    return Request(
        "GET", "/v1/languages", lambda response: _LANGUAGES.validate_json(check(response).content)
    )


class JobCore(Handle[TransportT]):
    """A submitted execution. ``result`` is what was last heard of it."""

    def __init__(self, transport: TransportT, result: ExecutionResult) -> None:
        super().__init__(transport)
        if result.id is None:
            raise ValueError("the server answered without an execution id")
        self.id: str = result.id
        self.result = result

    @property
    def status(self) -> str:
        return self.result.status.value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status}>"

    @operation
    def refresh(self) -> Flow[ExecutionResult]:
        self.result = yield from send(job_request("GET", self.id))
        return self.result

    @operation
    def cancel(self) -> Flow[ExecutionResult]:
        self.result = yield from send(job_request("POST", self.id, "cancel"))
        return self.result

    def _events(self, after: int = 0) -> Request[EventStream]:
        """The job's events (SSE) from the start, or after event ``after``, to the result."""
        return stream_request(
            f"/v1/executions/{self.id}/events",
            after,
            last=lambda event: isinstance(event, ResultEvent),
            observe=self._observe,
        )

    events = event_stream(_events)

    def _observe(self, event: Event) -> None:
        if isinstance(event, ResultEvent):
            self.result = event.result

    @operation
    def wait(self) -> Flow[ExecutionResult]:
        """Waits for the job to finish (following its events) and returns the result."""
        if self.result.status not in TERMINAL:
            yield from drain(self._events())
        return self.result


class Job(JobCore[SyncTransport], SyncHandle):
    """A submitted execution, on a Client: see JobCore."""


class AsyncJob(JobCore[AsyncTransport], AsyncHandle):
    """A submitted execution, on an AsyncClient: see JobCore."""


class ClientCore(Handle[TransportT], Generic[TransportT, JobT, InteractiveT]):
    """What a client does, on whichever transport it is."""

    _job: type[JobT]
    _interactive: type[InteractiveT]

    def __init__(self, transport: TransportT, config: Config) -> None:
        super().__init__(transport)
        self._config = config

    @operation
    def run(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> Flow[ExecutionResult]:
        """Runs a program and returns its result."""
        body = execution_body(language, code, options)
        return (yield from send(submit_request(body, wait=True)))

    @operation
    def submit(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> Flow[JobT]:
        """Queues a program; returns at once with a handle on the job."""
        body = execution_body(language, code, options)
        return self._job(self._transport, (yield from send(submit_request(body, wait=False))))

    @operation
    def get(self, job_id: str) -> Flow[JobT]:
        return self._job(self._transport, (yield from send(job_request("GET", job_id))))

    @operation
    def languages(self) -> Flow[list[LanguageInfo]]:
        return (yield from send(languages_request()))

    def interactive(
        self,
        language: str | ExecutionRequest,
        code: str | None = None,
        **options: Unpack[RunOptions],
    ) -> InteractiveT:
        """A run whose stdin and output are live: ``with client.interactive(...) as run``
        (``async with`` on an AsyncClient)."""
        return self._interactive(self._config, execution_body(language, code, options))
