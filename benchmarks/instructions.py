"""Instructions per job under callgrind, the figure the machine's noise does not move.

``python benchmarks/instructions.py [bulk|fan-in|decorator|sync ...] [--jobs N]``

Each workload runs in a child Python under ``valgrind --tool=callgrind`` twice, with 100
and with N jobs (default 20,000); the difference in instructions divided by N - 100 is the
cost of one job, start-up and imports cancelled out.  The same figure is printed for the reference
batcher where the workload has one.  Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
BATCH_SIZE = 100
INTERVAL = 0.005

#: workload -> {implementation: Python expression run with ``n`` jobs}
WORKLOADS = {
    "bulk": {
        "ours": f"asyncio.run(w.bulk_ours(n, {BATCH_SIZE}, {INTERVAL}))",
        "reference": f"asyncio.run(w.bulk_reference(n, {BATCH_SIZE}, {INTERVAL}))",
    },
    "bulk-items": {
        "ours": f"asyncio.run(w.bulk_items_ours(n, {BATCH_SIZE}, {INTERVAL}))",
        "reference": f"asyncio.run(w.bulk_reference(n, {BATCH_SIZE}, {INTERVAL}))",
    },
    "bulk-many": {
        "ours": f"asyncio.run(w.bulk_many_ours(n, {BATCH_SIZE}, {INTERVAL}))",
        "reference": f"asyncio.run(w.bulk_reference(n, {BATCH_SIZE}, {INTERVAL}))",
    },
    "fan-in-items": {
        "ours": f"asyncio.run(w.fan_in_items_ours(n, 1000, {BATCH_SIZE}, {INTERVAL}))",
        "reference": f"asyncio.run(w.fan_in_reference(n, 1000, {BATCH_SIZE}, {INTERVAL}))",
    },
    "fan-in": {
        "ours": f"asyncio.run(w.fan_in_ours(n, 1000, {BATCH_SIZE}, {INTERVAL}))",
        "reference": f"asyncio.run(w.fan_in_reference(n, 1000, {BATCH_SIZE}, {INTERVAL}))",
    },
    "decorator": {
        "ours": f"asyncio.run(w.fan_in_decorator(n, 1000, {BATCH_SIZE}, {INTERVAL}))",
    },
    "sync": {
        "ours": f"w.sync_ours(n, 8, {BATCH_SIZE}, {INTERVAL}, False)",
    },
}


def instructions(expression: str, jobs: int) -> int:
    """Total instructions of a child Python evaluating ``expression`` with ``n = jobs``."""
    code = f"import asyncio, workloads as w\nn = {jobs}\n{expression}\n"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "PYTHONHASHSEED": "0"}  # fmt: skip
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", code],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        summary = re.search(r"^summary:\s+(\d+)", Path(out).read_text(), re.MULTILINE)
    if summary is None:
        raise RuntimeError("callgrind wrote no summary line")
    return int(summary.group(1))


_BASE_JOBS = 100


def per_job(expression: str, jobs: int) -> float:
    """Instructions per job: the extra instructions of ``jobs`` jobs over 100, per extra job."""
    return (instructions(expression, jobs) - instructions(expression, _BASE_JOBS)) / (jobs - _BASE_JOBS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", choices=[*WORKLOADS, []], default=["bulk", "fan-in"])
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args(argv)
    for workload in args.workloads or ["bulk", "fan-in"]:
        figures = {impl: per_job(expr, args.jobs) for impl, expr in WORKLOADS[workload].items()}
        line = ", ".join(f"{impl} {value:,.0f}" for impl, value in figures.items())
        ratio = (
            f" (ours / reference {figures['ours'] / figures['reference']:.3f})"
            if "reference" in figures
            else ""
        )
        print(f"{workload}: instructions per job: {line}{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
