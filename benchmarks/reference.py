"""The yardstick: a bare-bones asyncio micro-batcher, as small as such a thing can be.

A list buffer, one ``asyncio.Future`` per item, a ``loop.call_later`` timer armed by the
first item of a batch, and a dispatch when the batch is full or the timer fires.  No
retries, no backpressure, no events, no concurrency cap: every figure of our library is
reported as a ratio to this one, measured in the same process and run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ReferenceBatcher"]

BatchFn = Callable[[list[Any]], Awaitable[list[Any]]]


class ReferenceBatcher:
    """Batches items for an ``async`` function over a list; ``await submit(item)`` gives its result."""

    def __init__(self, process: BatchFn, batch_size: int, batch_interval: float) -> None:
        self._process = process
        self._batch_size = batch_size
        self._interval = batch_interval
        self._loop = asyncio.get_running_loop()
        self._items: list[Any] = []
        self._futures: list[asyncio.Future[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: Any) -> asyncio.Future[Any]:
        """Buffer ``item``; returns the future of its result."""
        future = self._loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if len(self._items) >= self._batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._interval, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        task = self._loop.create_task(self._run(items, futures))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, items: list[Any], futures: list[asyncio.Future[Any]]) -> None:
        try:
            results = await self._process(items)
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Dispatch the partial batch and wait for every batch to finish."""
        if self._items:
            self._flush()
        while self._tasks:
            running = list(self._tasks)
            await asyncio.gather(*running)
            self._tasks.difference_update(running)  # their done-callbacks may not have run yet
