"""Plot fan-in throughput and p99 latency against batch size and interval.

``python benchmarks/plot.py [--quick] [--repeats N] [--out docs/img/fan_in_sweep.png]``

Left: batch size swept at a 5 ms interval (1,000 tasks: batches leave by size).
Right: interval swept with a batch size that never fills (10,000 > 1,000 tasks: every
batch leaves by time, so latency follows the interval and throughput is about
1,000 jobs per interval).  Ours and the reference batcher alternate at every point.
Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys

import workloads as w
from harness import Metrics, run_alternating

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "docs", "img", "fan_in_sweep.png"
)
SIZES = (10, 25, 50, 100, 250, 500, 1000)
INTERVALS_MS = (1, 2, 5, 10, 20, 50)
NEVER_FILLS = 10_000


def _point(n: int, tasks: int, size: int, interval: float, repeats: int) -> dict[str, Metrics]:
    """Median metrics of ours and the reference at one (batch size, interval)."""
    args = (n, tasks, size, interval)
    impls = {
        "ours": lambda: asyncio.run(w.fan_in_ours(*args)),
        "reference": lambda: asyncio.run(w.fan_in_reference(*args)),
    }
    result = run_alternating(f"size={size} interval={interval}", impls, repeats, "reference")
    return {
        impl: {metric: statistics.median(run[metric] for run in runs) for metric in runs[0]}
        for impl, runs in result.runs.items()
    }


def sweep(quick: bool, repeats: int) -> dict[str, list[tuple[float, dict[str, Metrics]]]]:
    """Run both sweeps; prints one line per point as it goes."""
    tasks = 100 if quick else 1_000
    sizes = SIZES[:3] if quick else SIZES
    intervals = INTERVALS_MS[:3] if quick else INTERVALS_MS
    by_size, by_interval = [], []
    for size in sizes:
        point = _point(2_000 if quick else 50_000, tasks, size, 0.005, repeats)
        by_size.append((float(size), point))
        _print("batch_size", size, point)
    for ms in intervals:
        point = _point(1_000 if quick else 20_000, tasks, NEVER_FILLS, ms / 1e3, repeats)
        by_interval.append((float(ms), point))
        _print("interval_ms", ms, point)
    return {"size": by_size, "interval": by_interval}


def _print(axis: str, value: float, point: dict[str, Metrics]) -> None:
    cells = "  ".join(
        f"{impl} {m['jobs_per_s']:>9,.0f} jobs/s p99 {m['p99_ms']:6.2f} ms" for impl, m in point.items()
    )
    print(f"{axis}={value:<5g} {cells}", flush=True)


def draw(data: dict[str, list[tuple[float, dict[str, Metrics]]]], out: str) -> None:
    """Save a 2x2 figure: throughput and p99 latency against batch size and against interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    columns = (("size", "batch size (interval 5 ms)"), ("interval", "batch interval, ms (size never fills)"))
    rows = (("jobs_per_s", "throughput, jobs/s"), ("p99_ms", "p99 submit-to-result latency, ms"))
    for col, (key, xlabel) in enumerate(columns):
        xs = [x for x, _ in data[key]]
        for row, (metric, ylabel) in enumerate(rows):
            ax = axes[row][col]
            for impl, style in (("ours", "o-"), ("reference", "s--")):
                ax.plot(xs, [point[impl][metric] for _, point in data[key]], style, label=impl)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle("fan-in: 1,000 tasks each awaiting its own result (medians of alternating repeats)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"saved {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny points (for CI)")
    parser.add_argument("--repeats", type=int, help="repeats per point (default 3, quick 1)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to save the PNG")
    args = parser.parse_args(argv)
    data = sweep(args.quick, args.repeats or (1 if args.quick else 3))
    draw(data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
