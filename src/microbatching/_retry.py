"""Retry policy: how many attempts, how long to wait between them, which errors retry."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ._validate import number, positive_int, seconds
from .errors import BatchResultError

__all__ = ["PROGRAMMING_ERRORS", "RetryPolicy"]

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


#: Errors that mean a bug in the processor, not a passing fault: not retried by default.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (TypeError, AttributeError, NameError, SyntaxError)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry failed jobs with exponential backoff and jitter.

    The delay before attempt ``n + 1`` is ``min(max_delay, base_delay * multiplier ** (n - 1))``,
    reduced by a random fraction of at most ``jitter`` (0 = none, 1 = "full jitter").
    ``retry_on`` is a tuple of exception types, or a predicate on the error.  Errors in
    ``never_retry`` -- by default :data:`PROGRAMMING_ERRORS`, a bug the same code would
    hit again -- and a processor that breaks its contract
    (:class:`~microbatching.errors.BatchResultError`) are never retried; pass
    ``never_retry=()`` to retry those too.
    """

    max_attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retry_on: RetryOn = (Exception,)
    never_retry: tuple[type[BaseException], ...] = PROGRAMMING_ERRORS
    _random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive_int("max_attempts", self.max_attempts)
        seconds("base_delay", self.base_delay)
        seconds("max_delay", self.max_delay)
        number("multiplier", self.multiplier, minimum=1)
        number("jitter", self.jitter)
        if self.jitter > 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")
        if isinstance(self.retry_on, type) and issubclass(self.retry_on, BaseException):
            # retry_on=ValueError means (ValueError,), not "call ValueError(error)".
            object.__setattr__(self, "retry_on", (self.retry_on,))
        if not callable(self.retry_on) and not _is_exception_tuple(self.retry_on):
            raise TypeError("retry_on must be a tuple of exception types or a callable")
        if not _is_exception_tuple(self.never_retry):
            raise TypeError("never_retry must be a tuple of exception types")

    def should_retry(self, error: BaseException, attempts: int) -> bool:
        """Whether a job that failed with ``error`` on attempt ``attempts`` gets another one."""
        if attempts >= self.max_attempts or isinstance(error, (BatchResultError, *self.never_retry)):
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return bool(self.retry_on(error))

    def delay(self, attempts: int) -> float:
        """Seconds to wait after failed attempt number ``attempts`` (1-based)."""
        try:
            raw = min(self.max_delay, self.base_delay * self.multiplier ** (attempts - 1))
        except OverflowError:
            raw = self.max_delay
        return raw * (1.0 - self.jitter * self._random())


def _is_exception_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(item, type) and issubclass(item, BaseException) for item in value
    )
