"""Runs every benchmark module (or those named on the command line), writes JSON, prints a table."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path

from tests.perf.report import BenchmarkResult, print_table


def benchmark_modules(selected: list[str]) -> list[str]:
    names = sorted(
        module.name
        for module in pkgutil.iter_modules([str(Path(__file__).parent)])
        if module.name.startswith("bench_")
    )
    unknown = set(selected) - set(names)
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    return [name for name in names if not selected or name in selected]


def main() -> None:
    results: list[BenchmarkResult] = []
    for name in benchmark_modules(sys.argv[1:]):
        module = importlib.import_module(f"tests.perf.{name}")
        print(f"running {name} ...", flush=True)
        result: BenchmarkResult = asyncio.run(module.run())
        path = result.write()
        print(f"  wrote {path}")
        results.append(result)
    print()
    print_table(results)


if __name__ == "__main__":
    main()
