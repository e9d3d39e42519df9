"""The language table (``languages.toml``) and lookups over it."""

from __future__ import annotations

import asyncio
import os
import re
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from execbox.models import Limits

VERSION_RE = re.compile(r"(\d+\.\d+(?:\.\d+)?)")
SELFTEST_STDIN = "execbox\n"
SELFTEST_EXPECTED = "hello, execbox"


class Language(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    extensions: tuple[str, ...]
    source: str
    entry_pattern: str | None = None
    entry_default: str | None = None
    compile: tuple[str, ...] | None = None
    compile_env: dict[str, str] = Field(default_factory=dict)
    run: tuple[str, ...]
    env: dict[str, str] = Field(default_factory=dict)
    version: tuple[str, ...]
    packages: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    extra_ro_paths: tuple[str, ...] = ()
    limits: Limits = Field(default_factory=Limits)
    compile_limits: Limits = Field(default_factory=Limits)
    selftest: str

    @property
    def compiled(self) -> bool:
        return self.compile is not None

    @property
    def toolchain(self) -> str:
        """The binary that must exist for this language to work."""
        tool = self.compile or self.run
        # node running tsc: the script is the part that may be missing
        return tool[1] if tool[0].endswith("/node") and len(tool) > 1 else tool[0]

    def missing_toolchain(self) -> str | None:
        """A message saying what to install, or None when the toolchain is present."""
        for path in {self.toolchain, self.run[0]}:
            if path.startswith("/") and not os.path.exists(path):
                how = f"`apt-get install {' '.join(self.packages)}`"
                if self.npm:
                    how += " and `make setup` (npm: " + ", ".join(self.npm) + ")"
                return f"{self.name}: {path} is missing; install it with {how}"
        return None

    def entry_point(self, main_source: str) -> str | None:
        """The entry point named in the source (Java's public class), if the language has one."""
        if self.entry_pattern is None:
            return None
        match = re.search(self.entry_pattern, main_source)
        return match.group(1) if match else self.entry_default

    def is_source(self, path: str) -> bool:
        """Whether ``path`` is one of the language's sources (``{sources}`` in argv)."""
        return path.endswith(self.extensions)

    def source_name(self, entry: str | None) -> str:
        return self.source.replace("{entry}", entry or "")


class LanguageInfo(BaseModel):
    """What /v1/languages and `execbox languages` show."""

    name: str
    aliases: list[str]
    version: str | None
    compiled: bool
    extensions: list[str]
    available: bool


class Languages:
    """The table, with its defaults."""

    def __init__(
        self,
        languages: Iterable[Language],
        env: dict[str, str],
        limits: Limits,
        compile_limits: Limits,
    ) -> None:
        self.all = list(languages)
        self.env = env
        self.limits = limits
        self.compile_limits = compile_limits
        self._by_name: dict[str, Language] = {}
        for lang in self.all:
            for key in (lang.name, *lang.aliases):
                self._by_name[key.lower()] = lang
        self.versions: dict[str, str | None] = {}

    @classmethod
    def load(cls, text: str | None = None) -> Languages:
        if text is None:
            text = resources.files("execbox.languages").joinpath("languages.toml").read_text()
        data = tomllib.loads(text)
        defaults = data.get("defaults", {})
        return cls(
            (Language(**entry) for entry in data["language"]),
            env=defaults.get("env", {}),
            limits=Limits(**defaults.get("limits", {})),
            compile_limits=Limits(**defaults.get("compile_limits", {})),
        )

    def names(self) -> list[str]:
        return [lang.name for lang in self.all]

    def get(self, name: str) -> Language | None:
        return self._by_name.get(name.strip().lower())

    def for_path(self, path: str) -> Language | None:
        suffix = PurePosixPath(path).suffix.lower()
        return next((lang for lang in self.all if suffix in lang.extensions), None)

    def extra_ro_paths(self) -> set[str]:
        return {p for lang in self.all for p in lang.extra_ro_paths}

    async def probe_versions(self) -> dict[str, str | None]:
        """Asks each toolchain its version (on the host: these are trusted system binaries)."""

        async def probe(lang: Language) -> str | None:
            if lang.missing_toolchain():
                return None
            try:
                proc = await asyncio.create_subprocess_exec(
                    *lang.version,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                    env=self.env,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
            except (OSError, TimeoutError):
                return None
            match = VERSION_RE.search(out.decode(errors="replace"))
            return match.group(1) if match else None

        found = await asyncio.gather(*(probe(lang) for lang in self.all))
        self.versions = dict(zip(self.names(), found, strict=True))
        return self.versions

    def info(self) -> list[LanguageInfo]:
        return [
            LanguageInfo(
                name=lang.name,
                aliases=list(lang.aliases),
                version=self.versions.get(lang.name),
                compiled=lang.compiled,
                extensions=list(lang.extensions),
                available=lang.missing_toolchain() is None,
            )
            for lang in self.all
        ]
