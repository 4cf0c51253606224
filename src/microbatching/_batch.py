"""The Batch record handed to events, and the checks on a processor's return value."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from ._job import Job
from .errors import BatchResultError

__all__ = ["Batch", "check_results", "plural"]


def plural(count: int, noun: str) -> str:
    """``"1 job"``, ``"3 jobs"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


_batch_ids = itertools.count(1)


class Batch:
    """A group of jobs handed to the processor together.

    ``trigger`` says why it was dispatched: ``"size"``, ``"time"``, ``"weight"`` or
    ``"shutdown"``.  ``opened_at`` is when its first job became ready and ``started_at``
    when the processor was called (monotonic seconds; ``None`` until then).
    """

    __slots__ = ("due", "id", "jobs", "opened_at", "started_at", "trigger", "weight")

    def __init__(self) -> None:
        self.id = next(_batch_ids)
        self.jobs: list[Job[Any]] = []
        self.trigger = ""
        self.opened_at = 0.0
        self.started_at: float | None = None
        self.weight = 0.0
        self.due = ""  # why the open batch may leave before it is full: "time" or "shutdown"

    def __len__(self) -> int:
        return len(self.jobs)

    def __repr__(self) -> str:
        return f"Batch(id={self.id}, size={len(self.jobs)}, trigger={self.trigger!r})"


def check_results(results: object, expected: int) -> Sequence[Any]:
    """``results`` if it is one result per job, else a :class:`BatchResultError` saying why."""
    # A list is by far the common case: test its exact type before the slower ABC check.
    if type(results) is list or (
        isinstance(results, Sequence) and not isinstance(results, (str, bytes, bytearray))
    ):
        actual = len(results)
    else:
        raise BatchResultError(
            f"processor must return a list with one result per job (expected "
            f"{plural(expected, 'result')}), got {type(results).__name__}"
        )
    if actual != expected:
        raise BatchResultError(
            f"processor returned {plural(actual, 'result')} for a batch of {plural(expected, 'job')}; "
            f"expected {expected}, one per job in order"
        )
    return results
