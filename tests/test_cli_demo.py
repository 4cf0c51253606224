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
    assert "-> retry in" in out
    assert "failed for good: job 29 failed after 3 attempts" in out
    assert "60 jobs submitted, 59 completed, 1 failed" in out
    assert "0 pending" in out
    assert done.stderr == ""


def test_cli_without_a_command_shows_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "microbatching"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage: microbatching" in done.stderr
