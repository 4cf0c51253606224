"""Running the processor: async ones on the loop, sync ones on processor threads, under ``batch_timeout``.

Whatever the processor does -- returns, raises (``SystemExit`` and ``KeyboardInterrupt``
included), hangs past ``batch_timeout`` -- ``call`` returns its results or raises its
error into the awaiting batch: nothing escapes into the event loop itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from typing import Any

from .._job import Job
from ..errors import BatchTimeoutError
from .processor import ProcessorFn, plural
from .threads import ProcessorThreads

__all__ = ["Runner"]

# Which engine's processor the current thread (sync) or task context (async) is running.
_on_thread = threading.local()
_in_context: contextvars.ContextVar[object] = contextvars.ContextVar("microbatching_processing", default=None)

# Threads beyond max_concurrent_batches, for sync processors that outlived batch_timeout:
# such a thread cannot be stopped, so there is room for new batches beside it.
_SPARE_THREADS = 4


class Runner:
    """Calls the processor for one batch at a time per slot; ``owner`` names whose processor it is."""

    def __init__(
        self, func: ProcessorFn, is_async: bool, timeout: float | None, slots: int, owner: object
    ) -> None:
        self.func = func
        self.is_async = is_async
        self._timeout = timeout
        self._slots = slots
        self._owner = owner
        self._threads: ProcessorThreads | None = None

    def start(self) -> None:
        """Start the processor threads a sync processor needs (on the loop thread, at start)."""
        if not self.is_async and self._threads is None:
            self._threads = ProcessorThreads(self._slots + _SPARE_THREADS, "microbatching-processor")

    async def call(self, jobs: list[Job[Any]]) -> object:
        """The processor's return value for a copy of ``jobs`` (a copy: it may mutate the list)."""
        if self._timeout is None:
            return await self._invoke(list(jobs))
        # The processor runs in its own task under wait_for (before Python 3.12): catch
        # everything inside it, so SystemExit or KeyboardInterrupt cannot escape that task
        # into the event loop, and re-raise it here, where the batch handles it.
        try:
            outcome, error = await asyncio.wait_for(self._guarded(list(jobs)), self._timeout)
        except asyncio.TimeoutError:
            raise BatchTimeoutError(
                f"processor ran longer than batch_timeout={self._timeout}s "
                f"on a batch of {plural(len(jobs), 'job')}"
            ) from None
        if error is not None:
            raise error
        return outcome

    async def _guarded(self, jobs: list[Job[Any]]) -> tuple[object, BaseException | None]:
        try:
            return await self._invoke(jobs), None
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return None, exc

    async def _invoke(self, jobs: list[Job[Any]]) -> object:
        if self.is_async:
            return await self._awaited(self.func(jobs))
        threads = self._threads
        if threads is None:
            raise RuntimeError("the processor threads were not started")
        results = await threads.run(asyncio.get_running_loop(), self._run_sync, jobs)
        if inspect.isawaitable(results):  # a plain callable that returned a coroutine
            results = await self._awaited(results)
        return results

    async def _awaited(self, results: Any) -> object:
        # Marked for the processor's own awaits (and tasks it starts), not for what runs after it.
        token = _in_context.set(self._owner)
        try:
            return await results
        finally:
            _in_context.reset(token)

    def _run_sync(self, jobs: list[Job[Any]]) -> object:
        _on_thread.owner = self._owner
        try:
            return self.func(jobs)
        finally:
            _on_thread.owner = None

    def is_processing_here(self) -> bool:
        """Whether the caller runs inside this processor (where waiting for the batcher would deadlock)."""
        return getattr(_on_thread, "owner", None) is self._owner or _in_context.get() is self._owner

    def shutdown(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()
