"""A small EventEmitter: ``on``, ``once``, ``off``/``remove_listener``, ``emit``.

Written here rather than taken from pyee because the engine asks "is anyone listening?"
on the hot path for every job: listeners live in a dict of immutable tuples, so that
check is one dict lookup and ``emit`` never copies or locks.  Handlers may be sync or
``async def``; a handler that raises never reaches the engine: the error goes to the
``error`` event, or to the ``microbatching`` logger when nobody listens for ``error``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["EVENTS", "EventEmitter"]

logger = logging.getLogger("microbatching")

#: Every event the batcher emits, with the arguments its handlers receive.
EVENTS: dict[str, str] = {
    "job_added": "(job)",
    "batch_started": "(batch)",
    "batch_completed": "(batch, results)",
    "batch_failed": "(batch, error)",
    "job_completed": "(job, result)",
    "job_retrying": "(job, error, delay)",
    "job_failed": "(job, error)",
    "shutdown_started": "()",
    "shutdown_completed": "()",
    "error": "(error, event)",
}

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


class EventEmitter:
    """Register handlers for the batcher's lifecycle events and emit them."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Handler tasks that are awaiting the batcher's shutdown (see wait_for_handlers).
        self._awaiting_shutdown: set[asyncio.Task[Any]] = set()

    def on(self, event: str, handler: H | None = None) -> Any:
        """Call ``handler`` on every ``event``; without a handler, acts as a decorator."""
        if handler is None:
            return lambda func: self.on(event, func)
        self._add(event, handler)
        return handler

    def once(self, event: str, handler: H | None = None) -> Any:
        """Call ``handler`` on the next ``event`` only."""
        if handler is None:
            return lambda func: self.once(event, func)
        self._add(event, _Once(self, event, handler))
        return handler

    def off(self, event: str, handler: Handler) -> None:
        """Remove ``handler`` from ``event`` (also a ``once`` handler); unknown handlers are ignored."""
        current = self._handlers.get(event, ())
        # == rather than is: each access to a bound method (obj.method) makes a new object.
        kept = tuple(h for h in current if h != handler and getattr(h, "func", None) != handler)
        if len(kept) < len(current):
            self._set(event, kept)

    remove_listener = off

    def _discard(self, event: str, handler: Handler) -> bool:
        """Remove exactly ``handler`` (by identity); whether it was there."""
        current = self._handlers.get(event, ())
        kept = tuple(h for h in current if h is not handler)
        if len(kept) == len(current):
            return False
        self._set(event, kept)
        return True

    def remove_all_listeners(self, event: str | None = None) -> None:
        """Remove every handler of ``event``, or of every event."""
        if event is None:
            self._handlers = {}
            self._listeners_changed()
        else:
            self._set(event, ())

    def listeners(self, event: str) -> list[Handler]:
        """The handlers registered for ``event``, in call order."""
        return [getattr(h, "func", h) for h in self._handlers.get(event, ())]

    def listening(self, event: str) -> tuple[Handler, ...]:
        """The handlers of ``event`` as called (empty when nobody listens): one dict lookup."""
        return self._handlers.get(event, ())

    def is_handler_task(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` runs an async event handler."""
        return task in self._tasks

    def awaiting_shutdown(self, task: asyncio.Task[Any]) -> None:
        """``task``, a handler, waits for the shutdown: the shutdown must not wait for it."""
        self._awaiting_shutdown.add(task)

    def emit(self, event: str, *args: Any) -> bool:
        """Call the handlers of ``event`` with ``args``; returns whether any was called."""
        handlers = self._handlers.get(event)
        if not handlers:
            return False
        self.dispatch(event, handlers, args)
        return True

    def dispatch(self, event: str, handlers: tuple[Handler, ...], args: tuple[Any, ...]) -> None:
        """Call ``handlers`` (looked up by the caller, who may reuse them) with ``args``."""
        for handler in handlers:
            try:
                outcome = handler(*args)
            except BaseException as exc:  # SystemExit too: a handler never stops the batcher
                self._handler_failed(event, exc)
                continue
            if outcome is not None and inspect.isawaitable(outcome):  # most handlers return None
                self._run_async_handler(event, outcome)

    async def wait_for_handlers(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` seconds) for the async handlers still running, then cancel the rest.

        A handler that is itself waiting for this (one that awaits ``shutdown()``) is not
        waited for: that would wait forever.
        """
        current = asyncio.current_task()
        waiting_on_us = {task for task in self._tasks if task is current or task in self._awaiting_shutdown}
        pending = self._tasks - waiting_on_us
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()

    def _run_async_handler(self, event: str, outcome: Any) -> None:
        task = asyncio.ensure_future(self._handler_task(event, outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handler_task(self, event: str, outcome: Any) -> None:
        # Caught inside the task: a SystemExit or KeyboardInterrupt escaping a task would
        # stop the event loop itself.
        try:
            await outcome
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._handler_failed(event, exc)

    def _handler_failed(self, event: str, exc: BaseException) -> None:
        if event != "error" and self._handlers.get("error"):
            self.emit("error", exc, event)
        else:
            logger.error("a %r event handler raised", event, exc_info=exc)

    def _add(self, event: str, handler: Handler) -> None:
        if event not in EVENTS:
            known = ", ".join(EVENTS)
            raise ValueError(f"unknown event {event!r}; the events are: {known}")
        if not callable(handler):
            raise TypeError(f"event handler must be callable, got {handler!r}")
        self._set(event, (*self._handlers.get(event, ()), handler))

    def _set(self, event: str, handlers: tuple[Handler, ...]) -> None:
        # Copy-on-write: emit() may be iterating the old tuple in another thread.
        updated = dict(self._handlers)
        if handlers:
            updated[event] = handlers
        else:
            updated.pop(event, None)
        self._handlers = updated
        self._listeners_changed()

    def _listeners_changed(self) -> None:
        """Called after every change of listeners (subclasses cache what they need)."""


class _Once:
    """A handler that removes itself before its first call."""

    __slots__ = ("emitter", "event", "func")

    def __init__(self, emitter: EventEmitter, event: str, func: Handler) -> None:
        self.emitter, self.event, self.func = emitter, event, func

    def __call__(self, *args: Any) -> Any:
        # Remove this wrapper only (an on() of the same function stays), and call the
        # function only if this call is the one that removed it: once means once.
        if self.emitter._discard(self.event, self):
            return self.func(*args)
        return None
