"""Checking user-given options: one set of checks, one style of message, used everywhere.

Each check returns the value (as the type it must be) or raises ``TypeError`` (wrong
kind of value) or ``ValueError`` (right kind, out of range), naming the option.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["number", "one_of", "positive_int", "seconds"]


def positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """An ``int`` (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def number(
    name: str, value: object, *, minimum: float = 0.0, strict: bool = False, what: str = "a number"
) -> float:
    """A finite int or float (not a bool), ``>= minimum`` (``> minimum`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return float(value)


def seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """A finite number of seconds, ``>= 0`` (``> 0`` unless ``allow_zero``)."""
    return number(name, value, strict=not allow_zero, what="a number of seconds")


def one_of(name: str, value: object, choices: Iterable[str]) -> str:
    """One of ``choices`` (compared case-insensitively), returned in their spelling."""
    allowed = list(choices)
    if isinstance(value, str):
        for choice in allowed:
            if value.lower() == choice.lower():
                return choice
    raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
