"""The batching engine, in parts: see ``engine.py`` for how they fit together."""

from .engine import Engine
from .pending import Pending, ThreadSafePending
from .processor import check_results, is_async_callable, plural, resolve_processor

__all__ = [
    "Engine",
    "Pending",
    "ThreadSafePending",
    "check_results",
    "is_async_callable",
    "plural",
    "resolve_processor",
]
