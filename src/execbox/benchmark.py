"""Sandbox overhead against the bare floor, measured in one run (``execbox bench``).

Each round runs every variant once, in turn, so drift on the machine hits all of
them alike: bare spawn, the sandbox with its reused boxes, the sandbox cold, and the
whole runner. Results are medians and p90 in ms, and ratios to bare.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from execbox.config import Settings
from execbox.engine import Command, Sandbox
from execbox.models import ExecutionRequest, Limits, Verdict
from execbox.runner import Runner
from execbox.runner.plan import sandbox_limits

PYTHON = ["/usr/bin/python3", "-c", "print(1+1)"]
TRUE = ["/bin/true"]


async def _bare(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={}
    )
    await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed bare")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_benchmark(settings: Settings, iterations: int = 50) -> dict[str, Any]:
    runner = await Runner.create(settings)
    cold = Sandbox(settings.model_copy(update={"warm_pool_size": 0}))
    resolved = runner.resolve_limits(Limits(), Limits(), runner.table.limits)
    sandbox_lim = sandbox_limits(resolved)
    env = dict(runner.table.env)

    def through(sandbox: Sandbox, argv: list[str]) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            async with sandbox.workspace(resolved.disk_mb) as ws:
                result = await sandbox.run(ws, Command(argv, env), sandbox_lim)
            if result.verdict != Verdict.OK:
                raise RuntimeError(f"{argv} failed in the sandbox: {result}")

        return go

    async def via_runner() -> None:
        result = await runner.execute(ExecutionRequest(language="python", code="print(1+1)"))
        if result.verdict != Verdict.OK:
            raise RuntimeError(f"runner failed: {result}")

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "python_bare": lambda: _bare(PYTHON),
        "python_sandbox": through(runner.sandbox, PYTHON),
        "python_sandbox_cold": through(cold, PYTHON),
        "python_runner": via_runner,
        "true_bare": lambda: _bare(TRUE),
        "true_sandbox": through(runner.sandbox, TRUE),
        "true_sandbox_cold": through(cold, TRUE),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for fn in variants.values():  # warm-up: page cache, pools, first compile of init
            await fn()
        for _ in range(iterations):
            for name, fn in variants.items():
                if name.endswith("_sandbox") or name == "python_runner":
                    # Let the last box be reset, as it is between requests of a real server.
                    await runner.sandbox.warm_up()
                start = time.perf_counter()
                await fn()
                samples[name].append((time.perf_counter() - start) * 1000)
    finally:
        await cold.close()
        await runner.close()

    report: dict[str, Any] = {
        "iterations": iterations,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "cgroup_version": runner.sandbox.cgroups.version,
        "warm_pool_size": settings.warm_pool_size,
    }
    for name, values in samples.items():
        report[f"{name}_median_ms"] = round(statistics.median(values), 3)
        report[f"{name}_p90_ms"] = round(_percentile(values, 0.9), 3)
    overhead_names = {
        "sandbox": "overhead",
        "sandbox_cold": "overhead_cold",
        "runner": "runner_overhead",
    }
    for program in ("python", "true"):
        bare = report[f"{program}_bare_median_ms"]
        for variant, overhead in overhead_names.items():
            if f"{program}_{variant}_median_ms" not in report:
                continue
            median = report[f"{program}_{variant}_median_ms"]
            report[f"{program}_{overhead}_median_ms"] = round(median - bare, 3)
            report[f"{program}_{variant}_ratio"] = round(median / bare, 3)
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"execbox bench ({report['iterations']} runs each, interleaved)")
    for column in ("variant", "median ms", "p90 ms", "overhead ms", "x bare"):
        table.add_column(column, justify="right")
    for program in ("python", "true"):
        bare = report[f"{program}_bare_median_ms"]
        variants = ["bare", "sandbox", "sandbox_cold"] + (["runner"] if program == "python" else [])
        for variant in variants:
            median = report[f"{program}_{variant}_median_ms"]
            table.add_row(
                f"{program} {variant.replace('_', ' ')}",
                f"{median:.2f}",
                f"{report[f'{program}_{variant}_p90_ms']:.2f}",
                "" if variant == "bare" else f"{median - bare:+.2f}",
                "" if variant == "bare" else f"{median / bare:.2f}",
            )
    console.print(table)
