"""Tells a dependency that is away (Redis, the database) from a bug: the first is a
503 the caller may retry, the second a 500 with a debug id."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

# The exceptions that may mean so (``unavailable`` tells).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    DBAPIError,
    ConnectionError,
)


def unavailable(exc: BaseException) -> str | None:
    """The dependency ``exc`` says is unreachable, or None if it says something else."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "Redis (the job queue)"
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return "the database"
    if isinstance(exc, ConnectionError):
        # asyncpg raises it unwrapped when it cannot (re)connect.
        return "the database"
    return None
