"""Structured logs: one JSON object per line, with the request and job ids bound in
context (structlog contextvars), for execbox's own logs and for the libraries'
(uvicorn, SQLAlchemy) alike."""

from __future__ import annotations

import logging
import secrets
import sys
from typing import Any

import structlog


def configure_logging(level: str = "info") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            # First: a line below the level costs a level check, not the whole chain
            # (the stdlib logger would drop it only after the processors ran).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def internal_error(message: str, **context: Any) -> str:
    """Logs the exception being handled with a fresh debug id, and returns the id
    for the user, who can then point at this very log line."""
    debug_id = secrets.token_hex(6)
    structlog.get_logger("execbox").error(message, debug_id=debug_id, exc_info=True, **context)
    return debug_id
