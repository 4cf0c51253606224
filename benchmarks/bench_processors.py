"""Processors the benchmarks' worker processes run (``bench_processors:double``)."""

from __future__ import annotations

from typing import Any


def double(jobs: list[Any]) -> list[Any]:
    """The trivial work every queue benchmark does: twice each job's data."""
    return [job.data * 2 for job in jobs]
