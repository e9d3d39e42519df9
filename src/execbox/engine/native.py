"""Builds and locates ``execbox-init``, the small C helper in ``init.c``.

Compiled on first use with the system C compiler (the C language needs it
anyway), statically so it runs inside a sandbox that binds no libc path of its
own, and cached by source hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from execbox.engine.errors import SandboxUnavailable


def _source() -> bytes:
    return resources.files("execbox.engine").joinpath("init.c").read_bytes()


def init_binary(bin_dir: Path) -> Path:
    """The path of the compiled helper, building it if needed."""
    source = _source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = bin_dir / f"execbox-init-{digest}"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SandboxUnavailable(
            "no C compiler to build execbox-init: install it with `apt-get install gcc libc6-dev`"
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.chmod(0o755)
    with open(bin_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        src = bin_dir / f"init-{digest}.c"
        src.write_bytes(source)
        tmp = bin_dir / f".execbox-init-{digest}.{os.getpid()}"
        cmd = [compiler, "-O2", "-static", "-Wall", "-o", str(tmp), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        src.unlink()
        if done.returncode != 0:
            raise SandboxUnavailable(
                "building execbox-init failed (is libc6-dev installed?):\n" + done.stderr
            )
        tmp.chmod(0o755)
        tmp.rename(target)
    return target
