"""Jobs and the handles that deliver their results."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Job", "JobResult", "new_handle", "reset_handles_after_fork", "set_results"]

T = TypeVar("T")

logger = logging.getLogger("microbatching")

# Generated ids are unique across processes (random prefix, pid) and cheap: the id is only
# built the first time someone reads it, so the hot path never pays for it.
_ID_PREFIX = f"{secrets.token_hex(4)}-{os.getpid()}-"
_id_counter = itertools.count(1)
_NO_DATA: Any = object()  # Job(id) without data is refused: a job's data is what it is for


class Job(Generic[T]):
    """One unit of work: an ``id``, its ``data`` and the bookkeeping the batcher keeps on it.

    ``Job(1, "payload")`` or ``Job(data="payload")``; without an id a unique string id is
    generated.  ``attempts`` counts the attempts started (1 while the first runs);
    ``submitted_at`` is the monotonic time of submission (``None`` before).  ``deadline``
    is the monotonic time by which the job should have its result, set by
    ``submit_job(job, deadline=seconds)`` (``None`` without one).  ``receipt`` is opaque
    to users: a queue may keep its delivery data there (a lease token, say).
    """

    # Only four slots are filled here: every filled slot costs the garbage collector a
    # visit each time it scans the job, and bulk submits keep many jobs alive at once.
    # ``_submitted_at``, ``_ready_at``, ``_receipt`` and ``_deadline`` are filled when used.
    __slots__ = ("_deadline", "_handle", "_id", "_ready_at", "_receipt", "_submitted_at", "attempts", "data")

    _ready_at: float
    _submitted_at: float
    _deadline: float

    def __init__(self, id: Any = None, data: T = _NO_DATA) -> None:
        if data is _NO_DATA:
            if id is not None:  # Job("hello") would make "hello" the id and process None
                raise TypeError(
                    f"Job({id!r}) gives only an id: pass the data too, Job(id, data), or Job(data={id!r}) "
                    "for a job with a generated id (Job(id, None) for one without data)"
                )
            data = None  # type: ignore[assignment]
        self._id = id
        self.data = data
        self.attempts = 0
        self._handle: Any = None

    @property
    def submitted_at(self) -> float | None:
        """Monotonic time of submission, or ``None`` before the job is submitted."""
        try:
            return self._submitted_at
        except AttributeError:
            return None

    @submitted_at.setter
    def submitted_at(self, value: float) -> None:
        self._submitted_at = value

    @property
    def deadline(self) -> float | None:
        """Monotonic time (as ``submitted_at``) by which the job should have its result, or ``None``.

        Set by the ``deadline=`` of a submit, in seconds from then; a job whose deadline
        passes before its batch starts fails with ``DeadlineExceededError`` and never runs.
        """
        try:
            return self._deadline
        except AttributeError:
            return None

    @property
    def receipt(self) -> Any:
        """Delivery data a queue keeps on the job (a lease token, say), or ``None``."""
        try:
            return self._receipt
        except AttributeError:
            return None

    @receipt.setter
    def receipt(self, value: Any) -> None:
        self._receipt = value

    @property
    def id(self) -> Any:
        """The job's id, generated on first read when none was given."""
        if self._id is None:
            self._id = f"{_ID_PREFIX}{next(_id_counter)}"
        return self._id

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, attempts={self.attempts})"


# JobResult leans on how CPython's concurrent.futures.Future keeps its state (the names
# below, which wait() and as_completed() read too): this is the one place that does, and
# FUTURE_INTERNALS_KNOWN says whether this Python matches (a test fails loudly if not).
_PENDING, _CANCELLED, _NOTIFIED, _FINISHED = "PENDING", "CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"
_SETTLED = (_CANCELLED, _NOTIFIED, _FINISHED)


def _future_internals_known() -> bool:
    probe: concurrent.futures.Future[Any] = concurrent.futures.Future()
    names = ("_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks")
    if not all(hasattr(probe, name) for name in names) or probe._state != _PENDING:
        return False
    probe.set_result(None)
    return bool(probe._state == _FINISHED)


#: Whether this Python's Future keeps its state the way JobResult expects.
FUTURE_INTERNALS_KNOWN = _future_internals_known()
# Guards a handle's state while it has no condition of its own, and the creation of that
# condition: once one exists, every transition goes through it as in the base class.
_handles_lock = threading.Lock()


def reset_handles_after_fork() -> None:
    """In a forked child: a fresh lock (the parent's may have been held) and a new id prefix."""
    global _handles_lock, _ID_PREFIX, _id_counter
    _handles_lock = threading.Lock()
    _ID_PREFIX = f"{secrets.token_hex(4)}-{os.getpid()}-"
    _id_counter = itertools.count(1)


class JobResult(concurrent.futures.Future[Any]):
    """The handle of a job submitted to :class:`~microbatching.MicroBatching`.

    A :class:`concurrent.futures.Future` (``concurrent.futures.wait`` and ``as_completed``
    accept it): ``result(timeout)`` returns the job's value or raises its error,
    ``exception(timeout)``, ``done()``, ``add_done_callback()``, ``cancel()``; ``job`` is
    the job it belongs to.  Cancelling it before its batch starts drops the job.

    Unlike a plain Future it builds no lock until someone has to wait for it: a handle
    settled before anyone asks costs one small object.
    """

    # Class-level defaults stand in for what Future.__init__ would set per instance.
    _state = _PENDING
    _result: Any = None
    _exception: BaseException | None = None
    _cond: threading.Condition | None = None
    _done_callbacks: Any = ()

    def __init__(self, job: Job[Any] | None) -> None:  # no super().__init__(): see the class doc
        self.job = job

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        with _handles_lock:
            if self._cond is None:
                self._waiters: list[Any] = []
                self._done_callbacks = list(self._done_callbacks)
                self._cond = threading.Condition()
            return self._cond

    def _settle_unwatched(self, state: str, result: Any, exception: BaseException | None) -> bool:
        """Settle without a condition if nobody ever waited; False if one exists (use the base path)."""
        with _handles_lock:
            if self._cond is not None:
                return False
            if self._state in _SETTLED:
                raise concurrent.futures.InvalidStateError(f"{self._state}: {self!r}")
            self._result, self._exception, self._state = result, exception, state
        self._run_callbacks()
        return True

    def _run_callbacks(self) -> None:
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:  # each callback is isolated from the others
                logger.exception("a done callback of %r raised", self)

    def set_result(self, result: Any) -> None:
        """Settle with ``result`` (called by the batcher)."""
        if not self._settle_unwatched(_FINISHED, result, None):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        """Settle with ``exception`` (called by the batcher)."""
        if not self._settle_unwatched(_FINISHED, None, exception):
            super().set_exception(exception)

    def cancel(self) -> bool:
        """Cancel the job if its batch has not started; returns whether it is cancelled."""
        with _handles_lock:
            cond = self._cond
            if cond is None:
                if self._state != _PENDING:
                    return self._state != _FINISHED  # already cancelled: True, once
                self._state = _NOTIFIED  # nobody is waiting: nothing left to notify
        if cond is not None:
            with cond:  # the base-class path, done in one step so concurrent cancels agree
                if self._state != _PENDING:
                    return self._state != _FINISHED
                # Notified at once, as an executor would: wait() and as_completed() see it done.
                self._state = _NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                cond.notify_all()
        self._run_callbacks()
        return True

    def done(self) -> bool:
        """Whether the job has its outcome (or was cancelled)."""
        return self._state in _SETTLED

    def cancelled(self) -> bool:
        """Whether the handle was cancelled."""
        return self._state in (_CANCELLED, _NOTIFIED)

    def running(self) -> bool:
        """Always ``False``: the batcher does not report a job's batch as running here."""
        return False

    def result(self, timeout: float | None = None) -> Any:
        """The job's result; raises its error, or ``TimeoutError`` after ``timeout`` seconds."""
        if self._state == _FINISHED and self._exception is None:
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's error, or ``None`` if it succeeded; waits up to ``timeout`` seconds."""
        if self._state == _FINISHED:
            return self._exception
        return super().exception(timeout)

    def add_done_callback(self, fn: Any) -> None:
        """Call ``fn(handle)`` once the job has its outcome (at once if it has)."""
        with _handles_lock:
            if self._cond is None and self._state not in _SETTLED:
                self._done_callbacks = [*self._done_callbacks, fn]
                return
        if self._cond is not None:
            super().add_done_callback(fn)
            return
        try:
            fn(self)
        except Exception:
            logger.exception("a done callback of %r raised", self)

    def __repr__(self) -> str:
        of = "an item" if self.job is None else f"job={self.job.id!r}"
        return f"<JobResult {of} {self._state.lower()}>"


def _share_attribute_names() -> None:
    """Give each attribute a JobResult may carry its place in the class's shared keys, up front.

    CPython 3.11 adds no more names to a class's shared instance keys once attribute access
    on its instances has been specialized; a name first stored after that (``_result``, when
    the first handle settles) then gives every handle a dict of its own: a bigger handle,
    and one more object for the garbage collector to walk.  One throwaway handle storing
    every name once avoids that.
    """
    probe = JobResult(None)
    for name in ("_state", "_result", "_exception", "_cond", "_waiters", "_done_callbacks"):
        setattr(probe, name, getattr(probe, name, None))


_share_attribute_names()


class _PlainJobResult(concurrent.futures.Future[Any]):
    """The handle on a Python whose Future internals differ: a plain Future and its job."""

    def __init__(self, job: Job[Any] | None) -> None:
        super().__init__()
        self.job = job

    def __repr__(self) -> str:
        of = "an item" if self.job is None else f"job={self.job.id!r}"
        return f"<JobResult {of} {'done' if self.done() else 'pending'}>"


if not FUTURE_INTERNALS_KNOWN:  # pragma: no cover - a CPython this module does not know
    logger.warning("concurrent.futures.Future keeps its state differently here: handles are plain Futures")
    JobResult = _PlainJobResult  # type: ignore[misc, assignment]

#: ``new_handle()`` is a pending JobResult whose ``job`` the caller sets: the same object as
#: ``JobResult(None)``, made without running ``__init__`` (a Python frame on every submit).
new_handle: Callable[[], JobResult] = (
    functools.partial(object.__new__, JobResult)
    if FUTURE_INTERNALS_KNOWN
    else functools.partial(JobResult, None)
)

_ALREADY_SETTLED = (concurrent.futures.InvalidStateError, asyncio.InvalidStateError)


def set_results(handles: Sequence[Any], results: Sequence[Any]) -> None:
    """Settle each handle with its result, a batch at a time; an already-settled one is skipped.

    The JobResults nobody waits on are settled in this one frame under one hold of the
    lock (three Python calls each through ``set_result``); any other handle (a watched
    JobResult, an asyncio future, ``None`` for a job without one) goes the ordinary way.
    """
    if not FUTURE_INTERNALS_KNOWN or (handles and type(handles[0]) is not JobResult):  # C set_result
        _set_each(zip(handles, results, strict=True))
        return
    others: list[tuple[Any, Any]] = []
    callbacks: list[JobResult] = []
    with _handles_lock:
        for handle, result in zip(handles, results, strict=True):
            if type(handle) is not JobResult or handle._cond is not None:
                others.append((handle, result))
            elif handle._state == _PENDING:  # cancelled by its submitter: it keeps that
                handle._result = result
                handle._state = _FINISHED
                if handle._done_callbacks:
                    callbacks.append(handle)
    for handle in callbacks:
        handle._run_callbacks()
    _set_each(others)


def _set_each(pairs: Iterable[tuple[Any, Any]]) -> None:
    """``handle.set_result(result)`` for each pair; a missing (``None``) or settled handle is skipped."""
    for handle, result in pairs:
        if handle is not None:
            try:
                handle.set_result(result)
            except _ALREADY_SETTLED:
                pass
