"""Submitted file names on the compile and run command lines: a source named like an
option (``-o.c``) or a response file (``@opts.c``: gcc, javac and rustc read the
file it names for more options, such as gcc's ``-wrapper /bin/sh,...``; gcc even
hands cc1 the bare name, so ``./@opts.c`` is no cure) is refused with what to fix."""

from __future__ import annotations

import pytest

from execbox.models import ExecutionRequest, ExecutionResult, SourceFile
from execbox.runner import InvalidRequest, Runner
from kit.host import HostGuard
from kit.results import describe, stdout

C_MAIN = '#include <stdio.h>\nint main(void) {\n    puts("fine");\n}\n'
# Read as a response file, this makes gcc run every compiler pass through a shell.
WRAPPER = "-wrapper /bin/sh,-c,echo execbox-wrapper-ran;exit 1\n"


def files(*named: tuple[str, str]) -> list[SourceFile]:
    return [SourceFile(path=path, content=content) for path, content in named]


async def submit(runner: Runner, language: str, sources: list[SourceFile]) -> ExecutionResult:
    return await runner.execute(ExecutionRequest(language=language, files=sources))


@pytest.mark.parametrize(
    ("language", "sources"),
    [
        ("c", files(("main.c", C_MAIN), ("x.c", WRAPPER), ("@x.c", ""))),
        ("c", files(("main.c", C_MAIN), ("-o.c", "int x;\n"))),
        ("c", files(("main.c", C_MAIN), ("@lib/x.c", "int x;\n"))),
        ("c", files(("main.c", C_MAIN), ("lib/@x.c", "int x;\n"))),
        ("cpp", files(("main.cpp", C_MAIN), ("x.cpp", WRAPPER), ("@x.cpp", ""))),
        ("java", files(("Main.java", "public class Main {}\n"), ("@Helper.java", "class H {}\n"))),
        ("rust", files(("@main.rs", "fn main() {}\n"))),
        ("go", files(("main.go", "package main\nfunc main() {}\n"), ("-x.go", "package main\n"))),
        ("python", files(("-c.py", "print(42)\n"))),
    ],
)
async def test_source_names_that_compilers_read_as_options_are_refused(
    runner: Runner, language: str, sources: list[SourceFile]
) -> None:
    with pytest.raises(InvalidRequest, match="may not have a part that starts with '-' or '@'"):
        await submit(runner, language, sources)


async def test_other_names_with_dashes_and_ats_still_work(runner: Runner, host: HostGuard) -> None:
    # Data files are never on a command line; a dash inside a name is no option.
    c = await submit(
        runner,
        "c",
        files(("main.c", C_MAIN), ("-notes.txt", "x"), ("@data", "y"), ("my-lib.c", "int y;\n")),
    )
    assert stdout(c) == "fine\n", describe(c)
    # rustc is told the crate's name: it no longer derives it from the file's.
    rust = await submit(runner, "rust", files(("solution-1.rs", 'fn main() { println!("ok"); }')))
    assert stdout(rust) == "ok\n", describe(rust)
    await host.check()
