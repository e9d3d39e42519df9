"""Planning an execution: a request checked and resolved against the language table
and the server's limits, before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from execbox.config import Settings
from execbox.engine import SandboxLimits, WorkspacePathError
from execbox.engine.workspace import split_path
from execbox.errors import CallerError
from execbox.languages import Language, Languages
from execbox.models import ExecutionRequest, Limits, ResolvedLimits

MAX_SOURCE_BYTES = 8 << 20
# argv + environment of one program: above this execve fails anyway (E2BIG), and far above
# it the sandbox cannot even take the command (execbox-init reads at most 4 MiB).
MAX_ARGS_ENV_BYTES = 1 << 20


class InvalidRequest(CallerError, ValueError):
    status = 422

    """The request cannot run as asked; the message says what to change."""


class UnknownLanguage(InvalidRequest):
    pass


@dataclass(frozen=True)
class Plan:
    """A request checked and resolved against the language table."""

    language: Language
    files: list[tuple[str, bytes]]
    main: str
    entry: str | None
    run_limits: ResolvedLimits
    compile_limits: ResolvedLimits

    def argv(self, template: tuple[str, ...], limits: ResolvedLimits) -> list[str]:
        sources = [p for p, _ in self.files if self.language.is_source(p)]
        argv: list[str] = []
        for part in template:
            if part == "{sources}":
                argv += sources or [self.main]
            else:
                argv.append(
                    part.replace("{source}", self.main)
                    .replace("{entry}", self.entry or "")
                    .replace("{memory_mb}", str(limits.memory_mb))
                )
        return argv


def sandbox_limits(limits: ResolvedLimits) -> SandboxLimits:
    return SandboxLimits(
        cpu_time_s=limits.cpu_time_s,
        wall_time_s=limits.wall_time_s,
        memory_bytes=limits.memory_mb << 20,
        processes=limits.processes,
        output_bytes=limits.output_kb << 10,
        file_size_bytes=limits.file_size_kb << 10,
    )


class Planner:
    """Turns requests into plans; raises InvalidRequest with what to fix."""

    def __init__(self, languages: Languages, settings: Settings) -> None:
        self.table = languages
        self.settings = settings
        self._default_limits: dict[tuple[str, bool], ResolvedLimits] = {}

    def _language(self, request: ExecutionRequest, check_toolchain: bool) -> Language:
        lang = self.table.get(request.language)
        if lang is None:
            raise UnknownLanguage(
                f"unknown language {request.language!r}; supported: "
                + ", ".join(self.table.names())
            )
        missing = lang.missing_toolchain() if check_toolchain else None
        if missing:
            raise InvalidRequest(f"the toolchain is not installed on this server: {missing}")
        installed = self.table.versions.get(lang.name)
        if request.version and installed and not installed.startswith(request.version):
            raise InvalidRequest(
                f"{lang.name} {request.version} is not available; this server has {installed}"
            )
        return lang

    def resolve_limits(self, asked: Limits, lang_default: Limits, base: Limits) -> ResolvedLimits:
        merged = asked.merged_over(lang_default.merged_over(base))
        s = self.settings
        maxima = {
            "cpu_time_s": s.max_cpu_time_s,
            "wall_time_s": s.max_wall_time_s,
            "memory_mb": s.max_memory_mb,
            "processes": s.max_processes,
            "output_kb": s.max_output_kb,
            "file_size_kb": s.max_file_size_kb,
            "disk_mb": s.max_disk_mb,
        }
        too_big = [
            f"{key} = {getattr(asked, key)} (at most {cap})"
            for key, cap in maxima.items()
            if getattr(asked, key) is not None and getattr(asked, key) > cap
        ]
        if too_big:
            raise InvalidRequest("limits above this server's maxima: " + ", ".join(too_big))
        # Defaults never exceed the admin's maxima either.
        values = {k: min(v, maxima[k]) for k, v in merged.model_dump().items()}
        return ResolvedLimits(**values)

    def _stage_limits(
        self, lang: Language, asked: Limits, *, compile_stage: bool
    ) -> ResolvedLimits:
        """The limits of a language's stage; its defaults (what most requests ask for)
        are resolved once, as every request is planned twice (accepted, then run)."""
        default, base = (
            (lang.compile_limits, self.table.compile_limits)
            if compile_stage
            else (lang.limits, self.table.limits)
        )
        if asked.model_fields_set:
            return self.resolve_limits(asked, default, base)
        key = (lang.name, compile_stage)
        if key not in self._default_limits:
            self._default_limits[key] = self.resolve_limits(asked, default, base)
        return self._default_limits[key]

    def plan(self, request: ExecutionRequest, *, check_toolchain: bool = True) -> Plan:
        """Checks a request; raises InvalidRequest with what to fix."""
        lang = self._language(request, check_toolchain)
        if request.network and not self.settings.allow_network:
            raise InvalidRequest("network access is disabled on this server")
        sources: list[tuple[str | None, bytes]] = (
            [(f.path, f.data()) for f in request.files]
            if request.files
            else [(None, (request.code or "").encode())]
        )
        entry = lang.entry_point(sources[0][1].decode(errors="replace"))
        files: list[tuple[str, bytes]] = []
        total = 0
        for i, (given_path, data) in enumerate(sources):
            path = given_path or lang.source_name(entry)
            try:
                parts = split_path(path)
            except WorkspacePathError as exc:
                raise InvalidRequest(f"file path {path!r}: {exc}") from exc
            if not parts:
                raise InvalidRequest(f"file path {path!r} names no file")
            if (i == 0 or lang.is_source(path)) and any(p.startswith(("-", "@")) for p in parts):
                # Compilers would take it for an option or a response file (gcc, javac and
                # rustc read "@file"; gcc's cc1 even gets the bare file name).
                raise InvalidRequest(
                    f"file path {path!r}: a source file's path may not have a part that "
                    "starts with '-' or '@'; rename it"
                )
            total += len(data)
            if i == 0 and not data.strip():
                raise InvalidRequest("the program is empty")
            files.append(("/".join(parts), data))
        if total > MAX_SOURCE_BYTES:
            raise InvalidRequest(f"sources total {total} bytes; at most {MAX_SOURCE_BYTES}")
        arg_bytes = sum(len(a.encode()) + 1 for a in request.args) + sum(
            len(k.encode()) + len(v.encode()) + 2 for k, v in request.env.items()
        )
        if arg_bytes > MAX_ARGS_ENV_BYTES:
            raise InvalidRequest(
                f"args and env total {arg_bytes} bytes; at most {MAX_ARGS_ENV_BYTES}"
            )
        if len({p for p, _ in files}) != len(files):
            raise InvalidRequest("two files have the same path")
        return Plan(
            language=lang,
            files=files,
            main=files[0][0],
            entry=entry,
            run_limits=self._stage_limits(lang, request.limits, compile_stage=False),
            compile_limits=self._stage_limits(lang, request.compile_limits, compile_stage=True),
        )
