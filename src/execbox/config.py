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
    runtime_dir: Path = Field(
        Path("/run/execbox"),
        description="Workspaces and the files every sandbox binds (init, /etc, seccomp); "
        "its parents must be traversable by the sandbox uid",
    )

    # Sandbox
    sandbox_uid: int = Field(
        60100,
        ge=1,
        description="First host uid sandboxes run as: each live sandbox (a box, a persistent "
        "sandbox) has a uid of its own from EXECBOX_SANDBOX_UID_COUNT ones, since the kernel "
        "counts several limits (inotify, epoll watches, queued signals, pipe buffers) per uid",
    )
    sandbox_gid: int = Field(60100, ge=1, description="First host gid, paired with the uids")
    sandbox_uid_count: int = Field(
        1000,
        ge=1,
        description="Sandboxes live at once at most (uids, from EXECBOX_SANDBOX_UID): warm pool, "
        "running executions, persistent sandboxes and their warm pool; beyond, starting one "
        "fails (503). The default range 60100..61099 ends below systemd's dynamic users "
        "(61184..65519) and inside the 65536 uids a container usually maps",
    )
    bwrap_path: str = "/usr/bin/bwrap"
    cgroup_version: Literal["auto", "1", "2"] = "auto"
    cgroup_mount: Path = Path("/sys/fs/cgroup")
    cgroup_name: str = Field("execbox", description="Parent cgroup of every run")
    warm_pool_size: int = Field(
        default_factory=lambda: (os.cpu_count() or 1) + 2,
        ge=0,
        le=256,
        description="Sandboxes kept started and reused, ready or in use (a default worker "
        "pool plus two); executions beyond them start and free sandboxes of their own",
    )
    allow_network: bool = Field(False, description="Whether callers may ask for network")
    sandbox_cpu_weight: int = Field(
        10,
        ge=1,
        le=10000,
        description="CPU weight of all sandboxes together against the server and the rest "
        "of the host (cgroup v2 units, 100 is an equal share): when programs saturate the "
        "CPU, requests, health checks and streams are still served at once",
    )

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
    database_schema: str | None = Field(
        None, description="PostgreSQL schema for execbox's tables (default: the search_path)"
    )
    allow_insecure: bool = Field(
        False, description="Serve without API keys on a non-loopback address"
    )
    cors_origins: str | None = Field(
        None,
        description="Comma-separated origins allowed by CORS; their pages may open the "
        "API's WebSockets too",
    )
    allowed_hosts: str | None = Field(
        None,
        description="Comma-separated Host names the API answers to (`*.example.com`, `*` "
        "for any), besides the loopback names and the host `serve` is bound to; unset "
        "with API keys configured: any (a page that rebinds its name here has no key)",
    )
    max_body_kb: int = Field(10240, gt=0, description="Largest request body accepted")
    queue_size: int = Field(1000, gt=0, description="Jobs waiting at most; beyond, 429")
    max_attempts: int = Field(
        3, ge=1, description="Starts of a job (restarts included) before it is failed"
    )
    retention_days: float = Field(
        7, ge=0, description="Finished jobs older than this are deleted; 0 keeps them"
    )
    shutdown_grace_s: float = Field(
        10, ge=0, description="On shutdown, how long running jobs may finish before re-queueing"
    )
    sse_ping_s: float = Field(15, gt=0, description="Keepalive interval of event streams")
    webhook_allowed_hosts: str | None = Field(
        None, description="Comma-separated hosts callback_url may name (`*.example.com` too)"
    )
    webhook_internal_hosts: str | None = Field(
        None,
        description="Comma-separated hosts (`*.corp.example`, `10.0.0.7` too) callback_url "
        "may name although they resolve to loopback, private, link-local or other internal "
        "addresses, which are refused for every other host",
    )
    webhook_attempts: int = Field(5, ge=1, description="Deliveries tried per result")
    webhook_backoff_s: float = Field(1, ge=0, description="First retry delay, doubling after")
    webhook_timeout_s: float = Field(10, gt=0)
    webhook_secret: str | None = Field(
        None, description="Signs webhook bodies: X-Execbox-Signature: sha256=HMAC(body)"
    )
    log_level: str = "info"

    # Scale-out (EXECBOX_REDIS_URL set; the database must then be PostgreSQL)
    embedded_workers: bool | None = Field(
        None,
        description="Run workers inside `execbox serve` (default: yes, but not in scale-out "
        "mode, where `execbox worker` processes take the jobs)",
    )
    redis_prefix: str = Field(
        "execbox", description="Names execbox's queue, keys and channels in Redis"
    )
    heartbeat_s: float = Field(2, gt=0, description="How often a worker says it is alive")
    lease_s: float = Field(
        10, gt=0, description="A job whose worker was silent this long runs again elsewhere"
    )

    @property
    def api_key_list(self) -> list[str]:
        return _split(self.api_keys)

    @property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @property
    def allowed_host_list(self) -> list[str]:
        return [host.lower() for host in _split(self.allowed_hosts)]

    @property
    def webhook_host_list(self) -> list[str]:
        return [host.lower() for host in _split(self.webhook_allowed_hosts)]

    @property
    def webhook_internal_host_list(self) -> list[str]:
        return [host.lower().strip("[]") for host in _split(self.webhook_internal_hosts)]

    @property
    def scale_out(self) -> bool:
        return self.redis_url is not None

    @property
    def runs_embedded_workers(self) -> bool:
        return not self.scale_out if self.embedded_workers is None else self.embedded_workers

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'execbox.db'}"

    @property
    def workspaces_dir(self) -> Path:
        return self.runtime_dir / "workspaces"

    @property
    def bin_dir(self) -> Path:
        return self.runtime_dir / "bin"

    @property
    def ptys_dir(self) -> Path:
        return self.runtime_dir / "pts"


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
