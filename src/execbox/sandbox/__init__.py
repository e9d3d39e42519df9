"""Isolation only: runs one argv in a fresh, locked-down environment and reports
what happened. Knows nothing of languages or jobs."""

from execbox.sandbox.command import Command, SandboxLimits, SandboxResult
from execbox.sandbox.engine import Sandbox
from execbox.sandbox.errors import SandboxBusy, SandboxError, SandboxUnavailable
from execbox.sandbox.workspace import Workspace, WorkspacePathError

__all__ = [
    "Command",
    "Sandbox",
    "SandboxBusy",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "Workspace",
    "WorkspacePathError",
]
