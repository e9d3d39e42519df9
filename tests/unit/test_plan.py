"""Planning: a request checked against the language table and the server's maxima,
before anything runs (no sandbox, no toolchain needed)."""

from __future__ import annotations

import pytest

from execbox.config import Settings
from execbox.languages import Languages
from execbox.models import ExecutionRequest, Limits
from execbox.runner.plan import MAX_SOURCE_BYTES, InvalidRequest, Plan, Planner, UnknownLanguage


@pytest.fixture(scope="module")
def planner() -> Planner:
    settings = Settings(max_cpu_time_s=10, max_memory_mb=512, allow_network=False)
    return Planner(Languages.load(), settings)


def plan(planner: Planner, **fields: object) -> Plan:
    return planner.plan(ExecutionRequest.model_validate(fields), check_toolchain=False)


def test_limits_come_from_the_request_then_the_language_then_the_server(planner: Planner) -> None:
    planned = plan(planner, language="python", code="print(1)", limits={"cpu_time_s": 2})
    assert planned.run_limits.cpu_time_s == 2
    assert planned.run_limits.memory_mb > 0 and planned.run_limits.wall_time_s > 0


def test_limits_above_the_maxima_name_each_cap(planner: Planner) -> None:
    with pytest.raises(InvalidRequest, match=r"cpu_time_s = 11.0 \(at most 10") as raised:
        plan(planner, language="python", code="1", limits={"cpu_time_s": 11, "memory_mb": 64})
    assert raised.value.status == 422
    with pytest.raises(InvalidRequest, match=r"memory_mb = 4096 \(at most 512\)"):
        plan(planner, language="python", code="1", limits={"memory_mb": 4096})


def test_defaults_never_exceed_the_maxima(planner: Planner) -> None:
    planned = plan(planner, language="python", code="1")
    assert planned.run_limits.cpu_time_s <= 10
    assert planned.run_limits.memory_mb <= 512


def test_unknown_languages_list_the_supported_ones(planner: Planner) -> None:
    with pytest.raises(UnknownLanguage, match=r"supported: .*python"):
        plan(planner, language="cobol-2099", code="1")


def test_paths_that_leave_the_workspace_are_refused(planner: Planner) -> None:
    for path in ("../x.py", "/etc/passwd", "a/../../b.py"):
        with pytest.raises(InvalidRequest, match="file path"):
            plan(planner, language="python", files=[{"path": path, "content": "1"}])


def test_sources_and_arguments_are_bounded(planner: Planner) -> None:
    big = "#" * (MAX_SOURCE_BYTES + 1)
    with pytest.raises(InvalidRequest, match="sources total"):
        plan(planner, language="python", code=big)
    with pytest.raises(InvalidRequest, match="args and env total"):
        plan(planner, language="python", code="1", args=["x" * (1 << 20)])
    with pytest.raises(InvalidRequest, match="network access is disabled"):
        plan(planner, language="python", code="1", network=True)
    with pytest.raises(InvalidRequest, match="the program is empty"):
        plan(planner, language="python", code="  \n")


def test_compiled_languages_fill_the_source_into_their_argv(planner: Planner) -> None:
    planned = plan(planner, language="c", code="int main(void) { return 0; }")
    assert planned.language.compile is not None
    argv = planned.argv(planned.language.compile, planned.compile_limits)
    assert planned.main in argv
    assert Limits().merged_over(Limits(cpu_time_s=1)).cpu_time_s == 1
