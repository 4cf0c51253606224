"""Exporters for a batcher's statistics: Prometheus and OpenTelemetry.

Nothing here is imported by ``import microbatching`` and nothing registers itself: import
:mod:`microbatching.metrics.prometheus` or :mod:`microbatching.metrics.otel` and call its
``instrument(batcher)``.  Each needs its extra: ``pip install 'microbatching[prometheus]'``
or ``pip install 'microbatching[otel]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__: list[str] = []


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or fail with the ``pip install`` line of the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is not installed: pip install 'microbatching[{extra}]' to use this exporter"
        ) from exc
