"""Sandbox overhead vs the bare floor; writes bench/results/sandbox.json.

Usage (as root): .venv/bin/python bench/sandbox.py [--iterations N]
Same measurement as `execbox bench --json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from rich.console import Console

from execbox.benchmark import print_report, run_benchmark
from execbox.config import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    report = asyncio.run(run_benchmark(get_settings(), args.iterations))
    print_report(report, Console())
    out = Path(__file__).parent / "results" / "sandbox.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
