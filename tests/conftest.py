"""What each test folder needs of the machine, as markers: ``needs_root`` (the real
sandbox: cgroups, mounts, a uid of its own), ``needs_postgres`` and ``needs_redis``
(the machine's servers on 127.0.0.1), ``needs_browser`` (Debian's Chromium).

A test whose prerequisite is missing is skipped with the reason, so that a
contributor without root runs the rest (``make unit`` needs nothing). ``make test``
and CI set EXECBOX_TESTS_REQUIRE_ALL=1: there a missing prerequisite stops the run
at once, saying what to install or start, so nothing is skipped silently.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# The markers every test of a folder carries.
FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "engine": ("needs_root",),
    "sandboxes": ("needs_root",),
    "api": ("needs_root",),
    "client": ("needs_root",),
    "playground": ("needs_root", "needs_browser"),
    "scaleout": ("needs_root", "needs_postgres", "needs_redis"),
    "test_cli.py": ("needs_root",),
}


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


PREREQUISITES: dict[str, tuple[str, Callable[[], bool]]] = {
    "needs_root": ("needs root: the sandbox is real (run as root)", lambda: os.geteuid() == 0),
    "needs_postgres": (
        "needs PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`)",
        lambda: _listening(5432),
    ),
    "needs_redis": ("needs Redis at 127.0.0.1:6379", lambda: _listening(6379)),
    "needs_browser": (
        "needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
        lambda: Path("/usr/bin/chromium").exists(),
    ),
}


@cache
def _met(marker: str) -> bool:
    return PREREQUISITES[marker][1]()


def pytest_configure(config: pytest.Config) -> None:
    for marker, (reason, _) in PREREQUISITES.items():
        config.addinivalue_line("markers", f"{marker}: {reason}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing: set[str] = set()
    for item in items:
        relative = Path(str(item.path)).resolve().relative_to(TESTS)
        for marker in FOLDER_MARKERS.get(relative.parts[0], ()):
            item.add_marker(marker)
        for marker in PREREQUISITES:
            if item.get_closest_marker(marker) is not None and not _met(marker):
                missing.add(marker)
                item.add_marker(pytest.mark.skip(reason=PREREQUISITES[marker][0]))
    if missing and os.environ.get("EXECBOX_TESTS_REQUIRE_ALL") == "1":
        reasons = "; ".join(PREREQUISITES[marker][0] for marker in sorted(missing))
        raise pytest.UsageError(f"the whole suite was asked for, but it {reasons}")
