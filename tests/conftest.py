"""Shared test helpers: the virtual-clock loop (shipped in microbatching.testing), service checks."""

from __future__ import annotations

import importlib.metadata
import os
import socket
from typing import Any, TypeVar

import pytest

from microbatching.testing import VirtualClockLoop
from microbatching.testing import run_on_virtual_clock as vrun

__all__ = ["VirtualClockLoop", "double", "free_port", "service_available", "vrun"]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a test's private server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def service_available(host: str, port: int, name: str) -> None:
    """Skip (or, under MICROBATCHING_REQUIRE_SERVICES=1, fail) when a broker is unreachable."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return
    except OSError as exc:
        reason = f"{name} is not reachable at {host}:{port} ({exc})"
    if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and MICROBATCHING_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


async def double(jobs: list[Any]) -> list[Any]:
    """An async processor: twice each job's data."""
    return [job.data * 2 for job in jobs]


def pytest_configure(config: pytest.Config) -> None:
    try:
        aiormq_major = int(importlib.metadata.version("aiormq").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return
    if aiormq_major < 7:
        # aiormq 6 (what pip gives Python 3.10) leaves open, until it is collected, the socket
        # of a connection it gave up mid-exchange (a connect timed out, a connection found
        # stuck); aiormq 7 closes it.
        config.addinivalue_line("filterwarnings", "ignore:unclosed:ResourceWarning")
