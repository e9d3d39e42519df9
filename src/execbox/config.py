"""Settings, read once from the environment (prefix ``EXECBOX_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/execbox")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "execbox"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXECBOX_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)

    # Sandbox
    sandbox_uid: int = Field(60100, description="Host uid the sandboxed programs run as")
    sandbox_gid: int = 60100
    bwrap_path: str = "/usr/bin/bwrap"
    cgroup_version: Literal["auto", "1", "2"] = "auto"
    cgroup_mount: Path = Path("/sys/fs/cgroup")
    cgroup_name: str = Field("execbox", description="Parent cgroup of every run")
    warm_pool_size: int = Field(2, ge=0, le=64, description="Sandboxes kept started ahead")
    allow_network: bool = Field(False, description="Whether callers may ask for network")

    # Admin maxima: what a caller may ask for at most (requests beyond get a 422).
    max_cpu_time_s: float = 30
    max_wall_time_s: float = 60
    max_memory_mb: int = 2048
    max_processes: int = 256
    max_output_kb: int = 16384
    max_file_size_kb: int = 262144
    max_disk_mb: int = 1024

    # Service
    database_url: str | None = None
    redis_url: str | None = None
    api_keys: str | None = None
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    @property
    def bin_dir(self) -> Path:
        return self.data_dir / "bin"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
