"""``@batch``: turn a function over a list into a function over one item."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar, overload

from ._async import AsyncMicroBatching
from ._engine.processor import is_async_callable, resolve_processor
from ._options import Options, check_option_names
from ._retry import RetryPolicy
from ._sync import MicroBatching

__all__ = ["AsyncBatched", "SyncBatched", "batch"]

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class AsyncBatched(Protocol[T_contra, R]):
    """An ``async def`` function over a list, batched: ``await f(item)`` is one item's result.

    ``f(item)`` is a coroutine, so it works wherever an ``async def`` call does
    (``asyncio.create_task``, ``TaskGroup.create_task``, ``asyncio.run``);
    ``f.nowait(item)`` returns the item's future at once, without a coroutine (the fastest
    call, for hot loops); ``await f.many(items)`` submits many at once and returns their
    results in order (a failed item's exception in its slot).
    """

    def __call__(self, item: T_contra) -> Coroutine[Any, Any, R]: ...

    def nowait(self, item: T_contra) -> asyncio.Future[R]: ...

    async def many(self, items: Iterable[T_contra]) -> list[Any]: ...


class SyncBatched(Protocol[T_contra, R_co]):
    """A plain function over a list, batched across threads: ``f(item)`` blocks for the result.

    ``f.many(items)`` submits them all at once and returns their results in order.
    """

    def __call__(self, item: T_contra) -> R_co: ...

    def many(self, items: Iterable[T_contra]) -> list[Any]: ...


class _Decorator(Generic[T, R]):
    """What ``@batch(...)`` with options returns: applied to a function, the batched function."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options

    @overload
    def __call__(self, func: Callable[[list[T]], Awaitable[Sequence[R]]]) -> AsyncBatched[T, R]: ...

    @overload
    def __call__(self, func: Callable[[list[T]], Sequence[R]]) -> SyncBatched[T, R]: ...

    def __call__(self, func: Callable[..., Any]) -> Any:
        return _decorate(func, self._options)


@overload
def batch(func: Callable[[list[T]], Awaitable[Sequence[R]]], /) -> AsyncBatched[T, R]: ...


@overload
def batch(func: Callable[[list[T]], Sequence[R]], /) -> SyncBatched[T, R]: ...


@overload
def batch(
    func: None = None,
    /,
    *,
    batch_size: int = ...,
    batch_interval: float = ...,
    max_batch_weight: float | None = ...,
    weight: Callable[[Any], float] | None = ...,
    retry: RetryPolicy | None = ...,
    max_concurrent_batches: int = ...,
    max_pending: int | None = ...,
    batch_timeout: float | None = ...,
    policy: str | None = ...,
    latency_target: float | None = ...,
    objective: str = ...,
    shed: bool = ...,
) -> _Decorator[Any, Any]: ...


def batch(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Batch calls across concurrent callers: ``@batch(batch_size=32, batch_interval=0.01)``.

    The decorated function takes a list of items and returns one result per item; the
    wrapper takes one item.  An ``async def`` function stays one: ``await f(item)``, and
    ``f(item)`` is a coroutine wherever an ``async def`` call is expected (one batcher per
    event loop); ``f.nowait(item)`` returns the item's future without a coroutine, for hot
    loops.  A plain function blocks the calling thread: ``f(item)``, batched across
    threads.  Works on methods too (one batcher per instance).  Options are those of
    :class:`AsyncMicroBatching`; ``weight`` receives the item; ``retry`` defaults to
    ``None`` here, and a failing item raises the function's own exception, as a direct call
    would.
    """
    options.setdefault("retry", None)
    check_option_names("batch", options)
    Options(**options)  # the options are checked now, not at the first call
    return _Decorator(options) if func is None else _decorate(func, options)


_NO_ITEM: Any = object()


def _decorate(target: Callable[..., Any], options: dict[str, Any]) -> Any:
    resolve_processor(target)  # a clear error now for something that cannot process a list
    weigh = options.get("weight")
    if weigh is not None:  # the function's callers think in items, not jobs
        options = {**options, "weight": lambda job: weigh(job.data)}
    if is_async_callable(target):
        return _async_wrapper(target, options)
    return _sync_wrapper(target, options)


def _per_instance(caller: type[_Caller], target: Callable[..., Any], options: dict[str, Any]) -> Any:
    """The caller of a method for one instance (one batcher per instance)."""
    callers: weakref.WeakKeyDictionary[Any, _Caller] = weakref.WeakKeyDictionary()

    def of(instance: Any) -> _Caller:
        found = callers.get(instance)
        if found is None:
            found = callers[instance] = caller(functools.partial(target, instance), options)
        return found

    return of


def _async_wrapper(target: Callable[..., Any], options: dict[str, Any]) -> Any:
    plain = _AsyncCaller(target, options)
    bound = _per_instance(_AsyncCaller, target, options)
    running_loop = asyncio.get_running_loop

    def nowait(first: Any, second: Any = _NO_ITEM) -> asyncio.Future[Any]:
        """The item's future at once (no coroutine): ``await f.nowait(item)``."""
        if second is not _NO_ITEM:  # looked up on an instance: (instance, item)
            result: asyncio.Future[Any] = bound(first).call(second)
            return result
        # _AsyncCaller.call, written inline: the hot path of every call.
        if running_loop() is not plain._loop:
            plain._start_on_running_loop()
        return plain._batcher.submit_nowait(first)

    @functools.wraps(target)
    async def wrapper(first: Any, second: Any = _NO_ITEM) -> Any:
        if second is _NO_ITEM and running_loop() is plain._loop:  # nowait(first), written inline
            return await plain._batcher.submit_nowait(first)
        return await nowait(first, second)

    async def many(items: Iterable[Any]) -> list[Any]:
        """All ``items`` at once; their results in order (a failed item's exception in its slot)."""
        results: list[Any] = await plain.many(items)
        return results

    wrapper.nowait = nowait  # type: ignore[attr-defined]
    wrapper.many = many  # type: ignore[attr-defined]
    return wrapper


def _sync_wrapper(target: Callable[..., Any], options: dict[str, Any]) -> Any:
    plain = _SyncCaller(target, options)
    bound = _per_instance(_SyncCaller, target, options)

    @functools.wraps(target)
    def wrapper(first: Any, second: Any = _NO_ITEM) -> Any:
        if second is not _NO_ITEM:  # looked up on an instance: (instance, item)
            return bound(first).call(second)
        return plain.call(first)

    def many(items: Iterable[Any]) -> list[Any]:
        """All ``items`` at once; their results in order (a failed item's exception in its slot)."""
        return plain.many(items)

    wrapper.many = many  # type: ignore[attr-defined]
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
        return self._batcher.submit_nowait(item)

    def many(self, items: Any) -> Any:
        if asyncio.get_running_loop() is not self._loop:
            self._start_on_running_loop()
        return self._batcher.submit_many(items)

    def _start_on_running_loop(self) -> None:
        batcher = AsyncMicroBatching(None, self._func, takes="items", **self._options)
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
        return batcher.submit(item).result()

    def many(self, items: Any) -> list[Any]:
        batcher = self._batcher
        if batcher is None:
            with self._starting:
                batcher = self._batcher = self._batcher or self._start()
        results: list[Any] = batcher.submit_many(items).result()
        return results

    def _start(self) -> MicroBatching:
        batcher = MicroBatching(None, self._func, takes="items", **self._options)
        batcher._raise_processor_errors()
        return batcher


_sync_callers: weakref.WeakSet[_SyncCaller] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for caller in list(_sync_callers):
        caller._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
