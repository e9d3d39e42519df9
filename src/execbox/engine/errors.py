"""Errors of the sandbox layer. Each message says what to do about it."""


class SandboxError(Exception):
    """The sandbox could not run something (a fault of the host, not of the program)."""


class SandboxUnavailable(SandboxError):
    """The host lacks something the sandbox needs (bwrap, user namespaces, cgroups, root)."""


class SandboxBusy(SandboxError):
    """The host runs as many sandboxes as it may (a retry later can succeed)."""
