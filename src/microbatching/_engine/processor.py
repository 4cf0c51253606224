"""The processor contract: what may process a batch, and what it must return.

Used by the engine, by ``@batch`` and by the worker, so all three agree on what counts as
a processor, what counts as async, and what counts as one result per job.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Iterable, Mapping, Set, Sized
from typing import Any

from ..errors import BatchResultError

__all__ = ["ProcessorFn", "check_results", "is_async_callable", "plural", "resolve_processor"]

ProcessorFn = Callable[[list[Any]], Any]


def plural(count: int, noun: str) -> str:
    """``"1 job"``, ``"3 jobs"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def is_async_callable(func: object) -> bool:
    """Whether calling ``func`` gives a coroutine: ``async def``, a partial of one, ``async def __call__``."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = type(func).__dict__.get("__call__") or getattr(type(func), "__call__", None)  # noqa: B004
    return call is not None and not inspect.isfunction(func) and inspect.iscoroutinefunction(call)


def resolve_processor(processor: object) -> tuple[ProcessorFn, bool]:
    """The callable to run for a batch, and whether it is ``async``.

    Accepts an object with ``process_batch(jobs)`` (the original BatchProcessorInterface)
    or any callable taking the list of jobs.
    """
    if processor is None:
        raise TypeError(
            "a processor is required: a callable taking a list of jobs, or an object with process_batch"
        )
    if isinstance(processor, type):
        raise TypeError(
            f"processor {processor.__name__} is a class: pass an instance ({processor.__name__}()), "
            "whose process_batch(jobs) or __call__(jobs) processes a batch"
        )
    method = getattr(processor, "process_batch", None)
    func: Any = method if method is not None else processor
    if not callable(func):
        raise TypeError(
            "processor must be a callable taking a list of jobs, or an object with a "
            f"process_batch(jobs) method; got {processor!r}"
        )
    return func, is_async_callable(func)


_NOT_RESULTS = (str, bytes, bytearray, Mapping, Set)


def check_results(results: object, expected: int) -> list[Any]:
    """``results`` as a list if it is one result per job, else a :class:`BatchResultError` saying why.

    Any iterable of results works (a list, a tuple, a numpy array, a generator); it is
    read once, so a sequence whose iteration disagrees with its ``len()`` cannot strand a job.
    """
    if type(results) is list:  # by far the common case
        found = results
    elif isinstance(results, Iterable) and not isinstance(results, _NOT_RESULTS):
        found = list(itertools.islice(results, expected + 1))  # an endless iterator cannot hang the batch
    else:
        raise BatchResultError(
            f"processor must return one result per job, in order (expected {plural(expected, 'result')}), "
            f"got {type(results).__name__}: return a list (or any sequence, such as a numpy array)"
        )
    if len(found) != expected:
        actual = str(len(found))
        if len(found) > expected and found is not results:  # read no further than one too many
            actual = str(len(results)) if isinstance(results, Sized) else f"more than {expected}"
        raise BatchResultError(
            f"processor returned {actual} results for a batch of {plural(expected, 'job')}; "
            f"expected {expected}, one per job in order"
        )
    return found
