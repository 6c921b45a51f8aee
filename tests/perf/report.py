"""Benchmark results: the figures, their targets, the JSON file and the printed table."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


@dataclass(frozen=True)
class BenchmarkResult:
    name: str
    description: str
    figures: list[Figure]
    parameters: dict[str, object] = field(default_factory=dict)

    def write(self) -> Path:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        document = {
            **asdict(self),
            "figures": [
                {**asdict(figure), "meets_target": figure.meets_target} for figure in self.figures
            ],
            "measured_at": datetime.now(UTC).isoformat(),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path


def percentile(samples: list[float], fraction: float) -> float:
    """The sample below which `fraction` of all samples fall (nearest rank)."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def latency_figures(prefix: str, seconds: list[float], p99_target_ms: float | None) -> list[Figure]:
    milliseconds = [sample * 1000 for sample in seconds]
    return [
        Figure(f"{prefix} p50", percentile(milliseconds, 0.50), "ms", higher_is_better=False),
        Figure(
            f"{prefix} p99",
            percentile(milliseconds, 0.99),
            "ms",
            target=p99_target_ms,
            higher_is_better=False,
        ),
        Figure(f"{prefix} mean", statistics.fmean(milliseconds), "ms", higher_is_better=False),
    ]


def print_table(results: list[BenchmarkResult]) -> None:
    rows = [("benchmark", "figure", "value", "target", "met")]
    for result in results:
        for figure in result.figures:
            comparator = ">=" if figure.higher_is_better else "<="
            target = (
                "" if figure.target is None else f"{comparator} {figure.target:g} {figure.unit}"
            )
            met = {None: "", True: "yes", False: "NO"}[figure.meets_target]
            rows.append(
                (result.name, figure.name, f"{figure.value:,.2f} {figure.unit}", target, met)
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
