"""The main job: ``python -m microbatching demo`` shows batches, a retry, a partial failure, a summary."""

import subprocess
import sys


def test_demo_prints_batches_retry_failure_and_summary() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "microbatching", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "trigger size" in out and "trigger time" in out and "trigger shutdown" in out
    assert "503 from the API (transient) -> retry in 50 ms (attempt 2)" in out
    assert "+15 (attempt 2)" in out  # the retried job joined a later batch
    assert "job 31: failed for good after 1 attempt: the API rejects this record" in out
    assert "60 jobs submitted, 59 completed, 1 failed, 1 retry, 0 pending" in out
    assert "every handle settled: 59 results, 1 error" in out
    assert done.stderr == ""


def test_demo_refuses_a_job_count_below_one() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "microbatching", "demo", "--jobs", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--jobs: must be at least 1, got 0" in done.stderr


def test_cli_without_a_command_shows_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "microbatching"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage: microbatching" in done.stderr
