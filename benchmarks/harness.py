"""Running implementations side by side and summarising them: alternation, medians, ratios.

This machine is noisy, so every comparison runs the implementations in turn, repeat after
repeat (rotating who goes first), and reports medians and the median of the *paired*
ratios (each repeat's figure divided by the same repeat's baseline figure).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Comparison", "Metrics", "percentile", "run_alternating"]

#: One run's figures, by metric name (``jobs_per_s``, ``p99_ms``, ...).
Metrics = dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest-rank on the sorted data."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class Comparison:
    """The runs of one workload: every repeat's metrics for every implementation."""

    workload: str
    baseline: str
    runs: dict[str, list[Metrics]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, impl: str, metric: str) -> float:
        """The median of ``metric`` over the repeats of ``impl``."""
        return statistics.median(run[metric] for run in self.runs[impl])

    def ratio(self, impl: str, metric: str = "jobs_per_s") -> float:
        """Median over repeats of ``impl``'s ``metric`` divided by the baseline's in the same repeat."""
        pairs = zip(self.runs[impl], self.runs[self.baseline], strict=True)
        return statistics.median(mine[metric] / base[metric] for mine, base in pairs)

    def summary(self) -> dict[str, Any]:
        """Medians of every metric per implementation, and the throughput ratio to the baseline."""
        out: dict[str, Any] = {"workload": self.workload, "baseline": self.baseline, "impls": {}}
        for impl, runs in self.runs.items():
            medians = {metric: self.median(impl, metric) for metric in runs[0]}
            if "jobs_per_s" in runs[0] and self.baseline in self.runs:
                medians["ratio"] = self.ratio(impl)
            if "cpu_jobs_per_s" in runs[0] and self.baseline in self.runs:
                medians["cpu_ratio"] = self.ratio(impl, "cpu_jobs_per_s")
            out["impls"][impl] = medians
        out["notes"] = self.notes
        return out


def run_alternating(
    workload: str, impls: dict[str, Callable[[], Metrics]], repeats: int, baseline: str
) -> Comparison:
    """Run each implementation ``repeats`` times, in turn, rotating the order every repeat."""
    comparison = Comparison(workload, baseline, {name: [] for name in impls})
    names = list(impls)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            comparison.runs[name].append(impls[name]())
    return comparison


_COLUMNS = [
    ("jobs_per_s", "jobs/s", "{:,.0f}"),
    ("ratio", "ratio", "{:.2f}x"),
    ("cpu_ratio", "cpu ratio", "{:.2f}x"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("mean_ms", "mean ms", "{:.2f}"),
    ("calls_per_job", "calls/job", "{:.3f}"),
    ("shed", "shed", "{:.0f}"),
    ("unfinished", "unfinished", "{:.0f}"),
    ("mean_batch", "batch", "{:.1f}"),
    ("late_p50_ms", "late p50", "{:.3f}"),
    ("late_p99_ms", "late p99", "{:.3f}"),
    ("late_min_ms", "late min", "{:.3f}"),
    ("batches", "batches", "{:.0f}"),
    ("rss_before_mb", "RSS at start MB", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.1f}"),
]


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of one workload's medians (only the columns it has)."""
    impls: dict[str, Metrics] = summary["impls"]
    present = [col for col in _COLUMNS if any(col[0] in m for m in impls.values())]
    header = ["impl", *(title for _, title, _ in present)]
    rows = [header]
    for name, metrics in impls.items():
        rows.append([name, *(fmt.format(metrics[key]) if key in metrics else "-" for key, _, fmt in present)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"== {summary['workload']} (ratio: to {summary['baseline']}, same repeat) =="]
    for row in rows:
        lines.append(
            "  ".join(
                cell.rjust(width) if i else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines.extend(f"   note: {note}" for note in summary["notes"])
    return "\n".join(lines)
