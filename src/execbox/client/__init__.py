"""The execbox Python SDK.

    from execbox.client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.run("python", "print(6 * 7)")
        print(result.verdict, result.run.stdout)

``Client`` and ``AsyncClient`` are twins (sync and asyncio) over one shared core.
Results are execbox.models.ExecutionResult, the same schema the server sends.
"""

from execbox.client._async import AsyncClient, AsyncInteractive, AsyncJob
from execbox.client._core import Event, OutputEvent, ResultEvent, RunOptions, StatusEvent
from execbox.client._sync import Client, Interactive, Job
from execbox.client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ExecboxError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
    TransportError,
)
from execbox.languages import LanguageInfo
from execbox.models import ExecutionResult, Limits, SourceFile, Stage, Status, TestCase, Verdict

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncInteractive",
    "AsyncJob",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "Event",
    "ExecboxError",
    "ExecutionResult",
    "Interactive",
    "InvalidRequestError",
    "Job",
    "LanguageInfo",
    "Limits",
    "NotFoundError",
    "OutputEvent",
    "PayloadTooLargeError",
    "RateLimitError",
    "ResultEvent",
    "RunOptions",
    "ServerError",
    "SourceFile",
    "Stage",
    "Status",
    "StatusEvent",
    "TestCase",
    "TransportError",
    "Verdict",
]
