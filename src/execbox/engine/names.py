"""Names that say which process owns what they name (workspaces, cgroups), so that
what a crashed or killed server left behind can be told from what a live one uses."""

from __future__ import annotations

import os
import uuid


def owned_name() -> str:
    """A unique name owned by this process."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def owner_alive(name: str) -> bool:
    pid, _, _ = name.partition("-")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
