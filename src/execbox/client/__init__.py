"""The execbox Python SDK.

    from execbox.client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.run("python", "print(6 * 7)")
        print(result.verdict, result.run.stdout)

``Client`` and ``AsyncClient`` (sync and asyncio) differ only in their transport:
every request, parser and handle is written once, in the shared core.
Results are execbox.models.ExecutionResult, the same schema the server sends.
"""

from execbox.client._async import AsyncClient
from execbox.client._events import Event, OutputEvent, ResultEvent, StatusEvent
from execbox.client._executions import AsyncJob, Job, RunOptions
from execbox.client._interactive import AsyncInteractive, Interactive
from execbox.client._sync import Client
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
