"""Private redis-server processes for the Redis tests: each on a free loopback port, its own
directory, stopped by the test that started it (the shared server on 6379 is never touched)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port


class PrivateRedis:
    """One redis-server of our own; ``kill()`` and ``start()`` again keep its port and directory.

    By default it keeps an append-only file fsynced on every write (``appendonly yes``,
    ``appendfsync always``): the setting under which an acknowledged write survives a crash.
    """

    def __init__(self, directory: Path, *options: str, tls: bool = False) -> None:
        if shutil.which("redis-server") is None:
            reason = "redis-server is not installed, so no private Redis can be started"
            if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") == "1":
                pytest.fail(f"{reason}, and MICROBATCHING_REQUIRE_SERVICES=1 requires it")
            pytest.skip(reason)
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.options = options or ("--appendonly", "yes", "--appendfsync", "always")
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        listen = (
            ["--port", "0", "--tls-port", str(self.port), *self._tls()]
            if self.tls
            else ["--port", str(self.port)]
        )
        command = ["redis-server", "--bind", "127.0.0.1", *listen, "--dir", str(self.directory), "--save", "",
                   "--logfile", str(self.directory / "redis.log"), *self.options]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (
                    (self.directory / "redis.log").read_text()
                    if (self.directory / "redis.log").exists()
                    else ""
                )
                pytest.fail(f"the private redis-server did not start: {log[-2000:]}")
            time.sleep(0.02)
        return self

    def _tls(self) -> list[str]:
        cert, key = self.directory / "cert.pem", self.directory / "key.pem"
        if not cert.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                 str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True,
            )  # fmt: skip
        return ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                "--tls-auth-clients", "no"]  # fmt: skip

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: what was not fsynced is gone, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
