"""Every language, for real: hello + stdin echo, compile errors, exit codes, args, env,
aliases, multi-file programs."""

from __future__ import annotations

import pytest

from execbox.languages import SELFTEST_EXPECTED
from execbox.models import ExecutionRequest, Verdict
from execbox.runner import Runner
from kit.results import describe, execute, run_stage, stdout

LANGUAGES = [
    "python", "javascript", "typescript", "java", "go", "c", "cpp", "rust", "ruby", "php", "bash",
]  # fmt: skip
COMPILED = ["typescript", "java", "go", "c", "cpp", "rust"]


def test_table_lists_the_eleven_languages(runner: Runner) -> None:
    assert sorted(runner.table.names()) == sorted(LANGUAGES)
    for info in runner.languages():
        assert info.available, f"{info.name}: toolchain missing"
        assert info.version, f"{info.name}: no version probed"
        assert info.compiled == (info.name in COMPILED)


@pytest.mark.parametrize("language", LANGUAGES)
async def test_selftest_hello_and_stdin_echo(runner: Runner, language: str) -> None:
    result = await runner.selftest(language)
    assert result.verdict == Verdict.OK, describe(result)
    assert result.tests is not None and len(result.tests) == 1
    test = result.tests[0]
    assert test.passed and test.exit_code == 0
    assert test.stdout.strip() == SELFTEST_EXPECTED
    assert result.language.name == language
    assert (result.compile is not None) == (language in COMPILED)


# Prints its arguments joined by "|", then $GREETING, then exits with status 3.
ARGS_ENV_EXIT3 = {
    "python": """
import os, sys
print("|".join(sys.argv[1:]))
print(os.environ.get("GREETING"))
sys.exit(3)
""",
    "javascript": """
console.log(process.argv.slice(2).join("|"));
console.log(process.env.GREETING);
process.exit(3);
""",
    "typescript": """
const args: string[] = process.argv.slice(2);
const greeting: string | undefined = process.env.GREETING;
console.log(args.join("|"));
console.log(greeting);
process.exit(3);
""",
    "java": """
public class Main {
    public static void main(String[] args) {
        System.out.println(String.join("|", args));
        System.out.println(System.getenv("GREETING"));
        System.exit(3);
    }
}
""",
    "go": """
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	fmt.Println(strings.Join(os.Args[1:], "|"))
	fmt.Println(os.Getenv("GREETING"))
	os.Exit(3)
}
""",
    "c": """
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) printf(i > 1 ? "|%s" : "%s", argv[i]);
    printf("\\n%s\\n", getenv("GREETING"));
    return 3;
}
""",
    "cpp": """
#include <cstdlib>
#include <iostream>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) std::cout << (i > 1 ? "|" : "") << argv[i];
    std::cout << "\\n" << std::getenv("GREETING") << std::endl;
    return 3;
}
""",
    "rust": """
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("{}", args.join("|"));
    println!("{}", std::env::var("GREETING").unwrap());
    std::process::exit(3);
}
""",
    "ruby": """
puts ARGV.join("|")
puts ENV["GREETING"]
exit 3
""",
    "php": """<?php
echo implode("|", array_slice($argv, 1)), "\\n", getenv("GREETING"), "\\n";
exit(3);
""",
    "bash": """
(IFS='|'; echo "$*")
echo "$GREETING"
exit 3
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
async def test_runtime_error_exit_code_args_and_env(runner: Runner, language: str) -> None:
    result = await execute(
        runner,
        language,
        ARGS_ENV_EXIT3[language],
        args=["alpha", "beta gamma", "ünï"],
        env={"GREETING": "hi from env"},
    )
    run = run_stage(result)
    assert result.verdict == Verdict.RUNTIME_ERROR, describe(result)
    assert run.exit_code == 3 and run.signal is None, describe(result)
    assert run.stdout.splitlines() == ["alpha|beta gamma|ünï", "hi from env"], describe(result)


# language -> (source with an error, what the diagnostics must name: file and line)
COMPILE_ERRORS = {
    "typescript": ('let x: number = "a";\nconsole.log(x);\n', "main.ts(1,"),
    "java": (
        'public class Main {\n  public static void main(String[] a) { int x = "a"; }\n}\n',
        "Main.java:2:",
    ),
    "go": ('package main\n\nfunc main() {\n\tvar x int = "a"\n\t_ = x\n}\n', "main.go:4:"),
    "c": ("int main(void) {\n    return undefined_symbol;\n}\n", "main.c:2:"),
    "cpp": ("#include <string>\nint main() {\n    std::string s = 1.5;\n}\n", "main.cpp:3:"),
    "rust": ('fn main() {\n    let x: i32 = "a";\n    println!("{}", x);\n}\n', "main.rs:2:"),
}


@pytest.mark.parametrize("language", COMPILED)
async def test_compile_error(runner: Runner, language: str) -> None:
    code, where = COMPILE_ERRORS[language]
    result = await execute(runner, language, code)
    assert result.verdict == Verdict.COMPILE_ERROR, describe(result)
    assert result.compile is not None and result.run is None and result.tests is None
    assert result.compile.verdict == Verdict.RUNTIME_ERROR  # the compiler exited non-zero
    assert result.compile.exit_code not in (None, 0)
    diagnostics = result.compile.stdout + result.compile.stderr
    assert where in diagnostics, describe(result)


async def test_c_segfault_is_signal_11(runner: Runner) -> None:
    code = "int main(void) {\n    volatile int *p = 0;\n    *p = 42;\n    return 0;\n}\n"
    result = await execute(runner, "c", code)
    run = run_stage(result)
    assert result.verdict == Verdict.RUNTIME_ERROR, describe(result)
    assert run.signal == 11 and run.exit_code is None, describe(result)


async def test_java_public_class_not_named_main(runner: Runner) -> None:
    code = """
import java.io.BufferedReader;
import java.io.InputStreamReader;

class Helper {
    static String shout(String s) { return s.toUpperCase(); }
}

public final class Solution {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println(Helper.shout(in.readLine()));
    }
}
"""
    result = await execute(runner, "java", code, stdin="quiet words\n")
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result) == "QUIET WORDS\n"


ALIASES = {
    "py": "python",
    "python3": "python",
    "js": "javascript",
    "node": "javascript",
    "ts": "typescript",
    "golang": "go",
    "c++": "cpp",
    "rs": "rust",
    "rb": "ruby",
    "sh": "bash",
    "PYTHON": "python",
    " Bash ": "bash",
}


def test_aliases_resolve(runner: Runner) -> None:
    for alias, name in ALIASES.items():
        plan = runner.planner.plan(ExecutionRequest(language=alias, code="x"))
        assert plan.language.name == name, alias


@pytest.mark.parametrize(
    ("alias", "code"),
    [
        ("py", "print('hi')"),
        ("python3", "print('hi')"),
        ("js", "console.log('hi')"),
        ("node", "console.log('hi')"),
        ("rb", "puts 'hi'"),
        ("sh", "echo hi"),
    ],
)
async def test_alias_runs_under_its_language(runner: Runner, alias: str, code: str) -> None:
    result = await execute(runner, alias, code)
    assert result.verdict == Verdict.OK, describe(result)
    assert result.language.name == ALIASES[alias]
    assert stdout(result) == "hi\n"


async def test_multi_file_c_with_header(runner: Runner) -> None:
    files = [
        {
            "path": "main.c",
            "content": '#include <stdio.h>\n#include "util.h"\n'
            'int main(void) { printf("%d\\n", triple(14)); return 0; }\n',
        },
        {"path": "util.h", "content": "#pragma once\nint triple(int x);\n"},
        {"path": "util.c", "content": '#include "util.h"\nint triple(int x) { return 3 * x; }\n'},
    ]
    result = await runner.execute(ExecutionRequest(language="c", files=files))
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result) == "42\n"


async def test_multi_file_python_imports(runner: Runner) -> None:
    files = [
        {
            "path": "main.py",
            "content": "import helper\nfrom pkg.deep import VALUE\n"
            "print(helper.greet('box'), VALUE)\n",
        },
        {"path": "helper.py", "content": "def greet(n):\n    return f'hello {n}'\n"},
        {"path": "pkg/__init__.py", "content": ""},
        {"path": "pkg/deep.py", "content": "VALUE = 7\n"},
    ]
    result = await runner.execute(ExecutionRequest(language="python", files=files))
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result) == "hello box 7\n"


async def test_go_builds_without_network_and_rust_std(runner: Runner) -> None:
    """Go's build cache lives in the sandbox; a program using several std packages builds."""
    code = """
package main

import (
	"encoding/json"
	"fmt"
	"sort"
)

func main() {
	xs := []int{3, 1, 2}
	sort.Ints(xs)
	b, _ := json.Marshal(xs)
	fmt.Println(string(b))
}
"""
    result = await execute(runner, "go", code)
    assert result.verdict == Verdict.OK, describe(result)
    assert stdout(result) == "[1,2,3]\n"
