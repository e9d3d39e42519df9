"""Settings of persistent sandboxes (environment, prefix ``EXECBOX_``), kept apart from
the service's own so that the two can change independently."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXECBOX_", extra="ignore")

    max_sandboxes: int = Field(20, ge=0, description="Live sandboxes at once; beyond, 429")
    sandbox_warm_pool: int = Field(
        2, ge=0, le=64, description="Sandboxes started ahead, so a create only pays for the take"
    )
    sandbox_timeout_s: float = Field(300, gt=0, description="Lifetime of a new sandbox")
    sandbox_max_timeout_s: float = Field(3600, gt=0, description="Longest lifetime allowed")
    sandbox_memory_mb: int = Field(512, gt=0, description="Memory of all its processes")
    sandbox_max_memory_mb: int = Field(2048, gt=0)
    sandbox_processes: int = Field(128, gt=0, description="Processes and threads at once")
    sandbox_max_processes: int = Field(512, gt=0)
    sandbox_cpus: float = Field(1.0, gt=0, description="CPU share (cores) of all its processes")
    sandbox_max_cpus: float = Field(4.0, gt=0)
    sandbox_disk_mb: int = Field(256, gt=0, description="Workspace quota")
    sandbox_max_disk_mb: int = Field(2048, gt=0)
    sandbox_file_mb: int = Field(64, gt=0, description="Largest file sent or read through the API")
    sandbox_command_timeout_s: float = Field(60, gt=0, description="Default foreground timeout")
    sandbox_output_kb: int = Field(1024, gt=0, description="Output kept per command result")
    sandbox_log_kb: int = Field(
        1024, gt=0, description="Replayable output kept per running command (finished: 64 KiB)"
    )
    sandbox_logs_kb: int = Field(
        16384, gt=0, description="Output and build logs kept in memory per sandbox, in all"
    )
    sandbox_max_commands: int = Field(
        32, gt=0, description="Commands running at once per sandbox (their logs are in memory)"
    )
    sandbox_build_step_timeout_s: float = Field(
        300, gt=0, description="Longest deps or checks step of a build"
    )
    preview_domain: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$",
        description="Previews also get hosts, so origins, of their own: "
        "{port}-{sandbox_id}.DOMAIN (a wildcard DNS name for this server, used for nothing "
        "else); preview URLs then use that form",
    )
    sandbox_start_wait_s: float = Field(
        30, gt=0, description="How long a build waits for its app to listen on its port"
    )
