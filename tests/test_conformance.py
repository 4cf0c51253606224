"""The conformance suite run over every bundled queue, and over a user-written push queue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, Backend

from microbatching import Job, MemoryQueue, QueueInterface
from microbatching.queues import ClaimQueue, open_queue
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


class TestBundledQueue(QueueConformance):
    """Every bundled durable queue, by URL."""

    backend: Backend
    url: str

    @pytest.fixture(autouse=True, params=BACKENDS, ids=[backend.name for backend in BACKENDS])
    def _backend(self, request: pytest.FixtureRequest, tmp_path: Path, _conformance_setup: None) -> None:
        self.backend = request.param
        self.backend.check_available()
        self.lease = self.backend.lease
        self.url = self.backend.url(self.queue_name, tmp_path)

    def make_queue(self) -> ClaimQueue:
        if self.backend.lease_is_the_queues:
            return open_queue(self.url, lease=self.lease)
        return open_queue(self.url)

    async def vanish(self, queue: Any) -> None:
        if self.backend.vanish_by_closing:
            await self.backend.break_connection(queue)  # type: ignore[misc]

    async def break_connection(self, queue: Any) -> None:
        if self.backend.break_connection is None:
            pytest.skip(f"{self.backend.name}: a connection cannot be dropped from the server side")
        await self.backend.break_connection(queue)


class TestSQLiteQueuePickle(QueueConformance):
    def make_queue(self) -> ClaimQueue:
        return open_queue(f"sqlite:///{self.tmp_path}/conformance.db", serializer="pickle")

    def test_unencodable_data_is_refused_at_submit_naming_the_job(self) -> None:
        """Pickle encodes what JSON refuses; see test_sqlite for what it still refuses."""
