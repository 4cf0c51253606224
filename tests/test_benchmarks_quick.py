"""The benchmark suite's quick mode runs end to end, so it cannot rot (no speed is judged)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.timeout(300)
def test_quick_benchmarks_run_every_workload_and_check_every_result(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    workloads = {"fan-in", "bulk", "decorator", "sync", "timer", "observability", "memory", "durable"}
    workloads.add("adaptive")
    assert set(results) == workloads
    assert results["timer"]["impls"]["ours"]["late_min_ms"] >= 0  # a batch never leaves early
    assert "== speed goals (quick sizes: speed NOT judged) ==" in proc.stdout
    verdicts = proc.stdout.split("== speed goals", 1)[1].splitlines()[1:]
    assert verdicts and all(v.startswith(("meets the goal: ", "below the goal: ")) for v in verdicts)


@pytest.mark.timeout(300)
def test_quick_plot_is_drawn(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed (pip install -e '.[bench]')")
    image = tmp_path / "sweep.png"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "plot.py"), "--quick", "--out", str(image)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert image.stat().st_size > 0


@pytest.mark.timeout(120)
def test_quick_tuning_curve_runs_the_library_and_draws(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed (pip install -e '.[bench]')")
    image = tmp_path / "tuning.png"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "tuning_curve.py"), "--quick", "--out", str(image)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("batch_size=")]
    assert len(lines) == 6, proc.stdout  # three sizes, three intervals
    by_setting = {line.split(":")[0]: line for line in lines}
    # a batch of one job per 5 ms call cannot keep up with 2,000 jobs/s; a batch of 100 can
    assert "fell behind" in by_setting["batch_size=1    batch_interval=  5 ms"], proc.stdout
    assert "fell behind" not in by_setting["batch_size=100  batch_interval=  5 ms"], proc.stdout
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
