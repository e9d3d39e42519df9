"""Isolation only: runs one argv in a fresh, locked-down environment and reports
what happened. Knows nothing of languages or jobs."""

from execbox.engine.command import Command, Outcome, SandboxLimits, SandboxResult
from execbox.engine.engine import Sandbox
from execbox.engine.errors import SandboxBusy, SandboxError, SandboxUnavailable
from execbox.engine.workspace import Workspace, WorkspacePathError

__all__ = [
    "Command",
    "Outcome",
    "Sandbox",
    "SandboxBusy",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "Workspace",
    "WorkspacePathError",
]
