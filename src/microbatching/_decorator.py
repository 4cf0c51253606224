"""``@batch``: turn a function over a list into a function over one item."""

from __future__ import annotations

import asyncio
import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any

from ._async import AsyncMicroBatching
from ._base import BatcherBase
from ._job import Job
from ._sync import MicroBatching

__all__ = ["batch"]


def batch(func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Batch calls across concurrent callers: ``@batch(batch_size=32, batch_interval=0.01)``.

    The decorated function takes a list of items and returns one result per item; the
    wrapper takes one item.  For ``async def`` functions, ``await f(item)`` (one batcher
    per event loop); for plain functions, ``f(item)`` blocks the calling thread and batches
    across threads.  Works on methods too (one batcher per instance).  Options are those of
    :class:`AsyncMicroBatching`; ``retry`` defaults to ``None`` here, and a failing item
    raises the function's own exception, as a direct call would.
    """
    options.setdefault("retry", None)

    def decorate(target: Callable[..., Any]) -> Any:
        BatcherBase(None, target, **options)  # validate the options now, not at first call
        wrapper_type = _AsyncBatched if inspect.iscoroutinefunction(target) else _SyncBatched
        return functools.update_wrapper(wrapper_type(target, options), target)

    return decorate if func is None else decorate(func)


class _Batched:
    """Shared by both wrappers: the options, and binding to an instance for methods."""

    def __init__(self, func: Callable[..., Any], options: dict[str, Any]) -> None:
        self._func = func
        self._options = options
        self._per_instance: weakref.WeakKeyDictionary[Any, _Batched] = weakref.WeakKeyDictionary()

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        bound = self._per_instance.get(instance)
        if bound is None:
            bound = type(self)(functools.partial(self._func, instance), self._options)
            self._per_instance[instance] = bound
        return bound

    def _make_processor(self) -> Callable[[list[Job[Any]]], Any]:
        func = self._func

        def process(jobs: list[Job[Any]]) -> Any:
            return func([job.data for job in jobs])

        return process


class _AsyncBatched(_Batched):
    _loop: asyncio.AbstractEventLoop | None = None
    _batcher: AsyncMicroBatching

    def __call__(self, item: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._switch_loop(loop)
        return self._batcher.submit_job_nowait(Job(None, item))

    def _switch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        func = self._func

        async def process(jobs: list[Job[Any]]) -> Any:
            return await func([job.data for job in jobs])

        self._batcher = AsyncMicroBatching(None, process, **self._options)
        self._batcher._engine.wrap_errors = False
        self._loop = loop


class _SyncBatched(_Batched):
    _batcher: MicroBatching | None = None

    def __call__(self, item: Any) -> Any:
        batcher = self._batcher
        if batcher is None:
            batcher = self._batcher = MicroBatching(None, self._make_processor(), **self._options)
            batcher._engine.wrap_errors = False
        return batcher.submit_job(Job(None, item)).result()
