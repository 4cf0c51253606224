"""The conformance suite run over every bundled queue, and over a user-written push queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from microbatching import Job, MemoryQueue, QueueInterface
from microbatching.queues import SQLiteQueue
from microbatching.testing import QueueConformance


class TestMemoryQueue(QueueConformance):
    def make_queue(self) -> MemoryQueue:
        return MemoryQueue()


class ListQueue(QueueInterface):
    """A user queue implementing only the original interface."""

    def __init__(self) -> None:
        self.jobs: list[Job[Any]] = []
        self.callback: Callable[[Job[Any]], Any] | None = None

    def add(self, job: Job[Any]) -> None:
        if self.callback is None:
            self.jobs.append(job)
        else:
            self.callback(job)

    def process(self, callback: Callable[[Job[Any]], Any]) -> None:
        self.callback = callback
        for job in self.jobs:
            callback(job)
        self.jobs.clear()


class TestUserPushQueue(QueueConformance):
    def make_queue(self) -> ListQueue:
        return ListQueue()


class TestSQLiteQueue(QueueConformance):
    def make_queue(self) -> SQLiteQueue:
        return SQLiteQueue(self.tmp_path / "conformance.db", lease=5.0)


class TestSQLiteQueuePickle(QueueConformance):
    def make_queue(self) -> SQLiteQueue:
        return SQLiteQueue(self.tmp_path / "conformance.db", serializer="pickle")

    def test_unencodable_data_is_refused_at_submit_naming_the_job(self) -> None:
        """Pickle encodes what JSON refuses; see test_sqlite for what it still refuses."""
