"""``@batch``: turn a function over a list into a function over one item."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._async import AsyncMicroBatching
from ._engine.processor import is_async_callable, resolve_processor
from ._job import Job
from ._options import Options
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
        Options(**options)  # validate the options now, not at first call
        resolve_processor(target)
        caller = _AsyncCaller if is_async_callable(target) else _SyncCaller
        return _wrapper(target, caller, options)

    return decorate if func is None else decorate(func)


_NO_ITEM: Any = object()


def _wrapper(target: Callable[..., Any], caller: type[_Caller], options: dict[str, Any]) -> Any:
    """A plain function (the fastest thing to call) that submits its item to ``caller``.

    Called with one argument, it is the decorated function; called with two, it was looked
    up on an instance as a method: ``(instance, item)``, with one batcher per instance.
    """
    plain = caller(target, options)
    per_instance: weakref.WeakKeyDictionary[Any, _Caller] = weakref.WeakKeyDictionary()

    def method_call(instance: Any, item: Any) -> Any:
        bound = per_instance.get(instance)
        if bound is None:
            bound = per_instance[instance] = caller(functools.partial(target, instance), options)
        return bound.call(item)

    if isinstance(plain, _AsyncCaller):
        running_loop = asyncio.get_running_loop

        @functools.wraps(target)
        def async_wrapper(first: Any, second: Any = _NO_ITEM) -> Any:
            if second is not _NO_ITEM:
                return method_call(first, second)
            # AsyncCaller.call, written inline: this is the hot path of every call.
            if running_loop() is not plain._loop:
                plain._start_on_running_loop()
            return plain._batcher.submit_job_nowait(Job(None, first))

        return async_wrapper

    @functools.wraps(target)
    def wrapper(first: Any, second: Any = _NO_ITEM) -> Any:
        if second is not _NO_ITEM:
            return method_call(first, second)
        return plain.call(first)

    return wrapper


class _Caller:
    """Submits one item to the batcher behind one decorated function (or bound method)."""

    def __init__(self, func: Callable[..., Any], options: dict[str, Any]) -> None:
        self._func = func
        self._options = options

    def call(self, item: Any) -> Any:
        raise NotImplementedError


class _AsyncCaller(_Caller):
    """One :class:`AsyncMicroBatching` per event loop; the call returns the job's future."""

    _loop: asyncio.AbstractEventLoop | None = None
    _batcher: AsyncMicroBatching

    def call(self, item: Any) -> asyncio.Future[Any]:
        if asyncio.get_running_loop() is not self._loop:
            self._start_on_running_loop()
        return self._batcher.submit_job_nowait(Job(None, item))

    def _start_on_running_loop(self) -> None:
        func = self._func

        async def process(jobs: list[Job[Any]]) -> Any:
            return await func([job.data for job in jobs])

        batcher = AsyncMicroBatching(None, process, **self._options)
        batcher._raise_processor_errors()
        batcher.start()
        self._batcher = batcher
        self._loop = asyncio.get_running_loop()


class _SyncCaller(_Caller):
    """One :class:`MicroBatching` (its own loop thread); the call blocks for the result.

    A forked child (a ``multiprocessing`` fork pool, say) starts its own batcher on first call.
    """

    _batcher: MicroBatching | None = None
    _starting = threading.Lock()  # the first concurrent calls must not each start one

    def __init__(self, func: Callable[..., Any], options: dict[str, Any]) -> None:
        super().__init__(func, options)
        _sync_callers.add(self)

    def _after_fork_in_child(self) -> None:
        self._batcher = None
        self._starting = threading.Lock()

    def call(self, item: Any) -> Any:
        batcher = self._batcher
        if batcher is None:
            with self._starting:
                batcher = self._batcher = self._batcher or self._start()
        return batcher.submit_job(Job(None, item)).result()

    def _start(self) -> MicroBatching:
        func = self._func

        def process(jobs: list[Job[Any]]) -> Any:
            return func([job.data for job in jobs])

        batcher = MicroBatching(None, process, **self._options)
        batcher._raise_processor_errors()
        return batcher


_sync_callers: weakref.WeakSet[_SyncCaller] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for caller in list(_sync_callers):
        caller._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
