"""The Batch record handed to events."""

from __future__ import annotations

import itertools
from typing import Any

from ._job import Job

__all__ = ["Batch"]


_batch_ids = itertools.count(1)


class Batch:
    """A group of jobs handed to the processor together.

    ``trigger`` says why it was dispatched: ``"size"``, ``"time"``, ``"weight"``,
    ``"flush"``, ``"bulk"`` (the last part of a ``submit_many``) or ``"shutdown"``.
    ``opened_at`` is when its first job became ready and ``started_at`` when the
    processor was called (monotonic seconds; ``None`` until then).
    """

    __slots__ = (
        "bulk",
        "closed_at",
        "due",
        "futures",
        "id",
        "jobs",
        "offset",
        "opened_at",
        "running",
        "settled",
        "started_at",
        "trigger",
        "weight",
    )

    def __init__(self) -> None:
        self.id = next(_batch_ids)
        self.jobs: list[Job[Any]] = []
        #: Items submitted without a Job (``submit_nowait(item)``): ``jobs`` holds the items
        #: and this their futures, in order; ``None`` for a batch of Jobs.
        self.futures: list[Any] | None = None
        #: Items of one ``submit_many`` call: they fill ``bulk.results`` from ``offset`` on.
        self.bulk: Any = None
        self.offset = 0
        self.closed_at: float | None = None
        self.trigger = ""
        self.opened_at = 0.0
        self.started_at: float | None = None
        self.weight = 0.0
        self.due = ""  # why the open batch may leave before it is full: "time" or "shutdown"
        self.running = False  # its task has started
        self.settled = False  # every job of it has its outcome

    def __len__(self) -> int:
        return len(self.jobs)

    def __repr__(self) -> str:
        return f"Batch(id={self.id}, size={len(self.jobs)}, trigger={self.trigger!r})"
