"""Hostile cases for the worker command line, run as a user would: ``python -m microbatching ...``.

Every command runs in a subprocess with a timeout, so a command that hangs fails its
test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import pty
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

# Every wait below is bounded well within this; it only stops a test the bounds missed.
pytestmark = pytest.mark.timeout(60)

PROCESSORS = """
import os, time

def echo(jobs):
    return [job.data for job in jobs]

def stuck(jobs):
    with open("started.txt", "a") as f:
        f.write("".join(f"{job.data}\\n" for job in jobs))
    if any(job.data == "stuck" for job in jobs):
        time.sleep(1000)
    return [job.data for job in jobs]

def kaput(jobs):
    raise RuntimeError("kaput")

def steady(jobs):
    time.sleep(0.05)
    return [job.data for job in jobs]
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "procs.py").write_text(PROCESSORS)
    return tmp_path


def run_cli(
    workdir: Path, *args: str, timeout: float = 20, input: str | None = None, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m microbatching ARGS`` in ``workdir``; a timeout fails the test, naming the command."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "microbatching", *args],
            cwd=workdir,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            **popen,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`microbatching {' '.join(args)}` did not finish within {timeout}s")


def stats_of(workdir: Path, queue: str = "sqlite:///q.db") -> dict[str, Any]:
    done = run_cli(workdir, "stats", "--json", "--queue", queue)
    assert done.returncode == 0, done.stderr
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def enqueue(workdir: Path, *values: str, queue: str = "sqlite:///q.db") -> None:
    done = run_cli(workdir, "enqueue", "--queue", queue, *values)
    assert done.returncode == 0, done.stderr


def wait_for_line(path: Path, line: str, timeout: float = 10) -> None:
    """Wait until ``path`` holds ``line`` as a whole line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.02)
    pytest.fail(f"{line!r} never appeared as a line of {path.name} within {timeout}s")


@contextlib.contextmanager
def worker(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A background ``microbatching worker``, killed at the end whatever happens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "microbatching", "worker", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def exit_within(process: subprocess.Popen[str], seconds: float) -> int | None:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def with_pythonpath(directory: Path) -> dict[str, str]:
    """The environment with ``directory`` first on the module search path."""
    path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command printed on stderr (no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {done.stderr[-1000:]!r}"
    return lines[0]


# -- a stuck sync processor does not keep the worker from exiting -------------------------------------


def test_drain_timeout_with_a_stuck_processor_exits_3_and_gives_every_job_back(workdir: Path) -> None:
    enqueue(workdir, '"stuck"', '"a"', '"b"')
    with worker(
        workdir, "procs:stuck", "--queue", "sqlite:///q.db", "--batch-size", "1",
        "--batch-interval", "0.01", "--drain-timeout", "1",
    ) as process:  # fmt: skip
        wait_for_line(workdir / "started.txt", "stuck")
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = exit_within(process, 8)
        assert code is not None, (
            "after SIGTERM with --drain-timeout 1 and a stuck processor, no exit within 8 s"
        )
        assert time.monotonic() - began < 6
        assert code == 3
        _, err = process.communicate(timeout=5)
    # The stuck job and the one claimed behind it are both given back, none left leased.
    assert "drain timeout (1.0s) ran out: 2 unfinished jobs were given back to the queue" in err, err
    figures = stats_of(workdir)
    assert (figures["pending"], figures["in_flight"], figures["done"]) == (3, 0, 0), figures


def test_a_processor_stuck_past_batch_timeout_does_not_keep_the_worker_alive(workdir: Path) -> None:
    enqueue(workdir, '"stuck"', '"a"', '"b"', '"c"')
    with worker(
        workdir, "procs:stuck", "--queue", "sqlite:///q.db", "--batch-size", "1", "--batch-interval",
        "0.01", "--batch-timeout", "1", "--max-attempts", "1",
    ) as process:  # fmt: skip
        wait_for_line(workdir / "started.txt", "c")  # the batches behind the stuck one ran
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        code = exit_within(process, 8)
        assert code is not None, "a worker whose processor thread outlived --batch-timeout did not exit"
        assert code == 0
    figures = stats_of(workdir)
    assert (figures["done"], figures["dead"], figures["in_flight"], figures["pending"]) == (3, 1, 0, 0)


def test_until_empty_with_a_stuck_processor_and_batch_timeout_finishes_by_itself(workdir: Path) -> None:
    """A cron job: the stuck job times out into the dead letters, the queue runs empty, the worker exits."""
    enqueue(workdir, '"stuck"', '"a"')
    done = run_cli(
        workdir, "worker", "procs:stuck", "--queue", "sqlite:///q.db", "--batch-size", "1",
        "--batch-interval", "0.01", "--batch-timeout", "1", "--max-attempts", "1", "--until-empty",
        timeout=15,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    figures = stats_of(workdir)
    assert (figures["done"], figures["dead"], figures["in_flight"]) == (1, 1, 0)


# -- enqueue when the disk fills up midway ------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE/SIGXFSZ (POSIX)")
def test_enqueue_that_fails_midway_stores_nothing(workdir: Path) -> None:
    """The disk "fills up" midway: the kernel refuses to grow any file of the enqueue process past
    RLIMIT_FSIZE (with SIGXFSZ ignored, the write fails with EFBIG: SQLite's "disk I/O error").
    Deterministic: the first 600 kB of the WAL are written, the rest of the 1.5 MB is refused."""
    import resource

    limit = 600_000

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    enqueue(workdir, '"first"')  # the queue exists: only the big enqueue meets the limit
    lines = "".join(json.dumps(f"{i:05d}" + "x" * 200) + "\n" for i in range(5000))
    done = run_cli(workdir, "enqueue", "--queue", "sqlite:///q.db", input=lines, preexec_fn=limit_file_size)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "nothing was enqueued" in one_line_error(done)
    assert stats_of(workdir)["pending"] == 1  # all or nothing: nothing


CHUNKED_QUEUE = '''
from microbatching.errors import QueueError
from microbatching.queues import SQLiteQueue

class ChunkedQueue(SQLiteQueue):
    """Stores at most 100 messages all-or-none; its third call fails."""

    atomic_enqueue_limit = 100
    calls = 0

    def __init__(self, url, **options):
        super().__init__(url.replace("chunked://", "sqlite:///"), **options)

    async def _enqueue(self, messages):
        assert len(messages) <= 100, len(messages)
        ChunkedQueue.calls += 1
        if ChunkedQueue.calls == 3:
            raise QueueError("the broker went away")
        return await super()._enqueue(messages)
'''
RUN_WITH_CHUNKED = (
    "import sys; from microbatching.queues import register_scheme; "
    "register_scheme('chunked', 'chunkedq', 'ChunkedQueue'); "
    "from microbatching.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_enqueue_on_a_queue_that_stores_in_chunks_says_exactly_how_many_were_stored(workdir: Path) -> None:
    (workdir / "chunkedq.py").write_text(CHUNKED_QUEUE)
    lines = "".join(f"{i}\n" for i in range(250))
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITH_CHUNKED, "enqueue", "--queue", "chunked://q.db"],
        cwd=workdir, input=lines, capture_output=True, text=True, timeout=20,
        env=with_pythonpath(workdir),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = one_line_error(done)
    assert "enqueued 200 of 250 jobs" in line and "the other 50 were not stored" in line, line
    assert stats_of(workdir)["pending"] == 200


# -- read-only commands write nothing --------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``directory``: its digest and modification time."""
    return {
        str(path.relative_to(directory)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


READ_ONLY = {
    "stats": ["stats"],
    "dead-letters-list": ["dead-letters", "list"],
    "dead-letters-requeue": ["dead-letters", "requeue", "--all"],
    "dead-letters-purge": ["dead-letters", "purge", "--all"],
}


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_admin_commands_leave_an_application_database_untouched(workdir: Path, command: str) -> None:
    app = workdir / "data"
    app.mkdir()
    conn = sqlite3.connect(app / "app.db")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ann')")
    conn.commit()
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    before = _snapshot(app)
    time.sleep(0.01)  # a rewrite would change the mtime
    done = run_cli(workdir, *READ_ONLY[command], "--queue", "sqlite:///data/app.db")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "holds no queue" in one_line_error(done)
    after = _snapshot(app)
    changed = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
    assert not changed, f"`{command}` on an application database changed or created {changed}"
    conn = sqlite3.connect(app / "app.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    finally:
        conn.close()
    assert tables == ["users"]


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_admin_commands_on_a_mistyped_path_exit_2_and_create_nothing(workdir: Path, command: str) -> None:
    done = run_cli(workdir, *READ_ONLY[command], "--queue", "sqlite:///typo/sub/q.db")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "typo/sub/q.db" in one_line_error(done)
    assert not (workdir / "typo").exists(), "a mistyped queue path was created, parent directories and all"


def test_a_worker_on_a_new_queue_says_it_is_empty_once(workdir: Path) -> None:
    with worker(workdir, "procs:echo", "--queue", "sqlite:///fresh.db", "--log-interval", "0.2") as process:
        assert process.stderr is not None
        said = [process.stderr.readline() for _ in range(2)]  # it is empty, then it started
        assert "started:" in said[1], said
        time.sleep(0.5)  # a progress line or two
        process.send_signal(signal.SIGTERM)
        assert exit_within(process, 10) == 0
        _, rest = process.communicate(timeout=5)
    err = "".join(said) + rest
    assert err.count("sqlite:///fresh.db is empty: waiting for jobs") == 1, err


# -- credentials in queue URLs never reach the terminal ----------------------------------------------

SECRET = "hunter2-s3cret"
# Each URL, and the exit code refusing it: 2 when the URL itself cannot be used, 1 when the
# broker refuses the credentials (the local Redis has no user "nobody", so its AUTH fails
# whichever redis-py version sends it).
SECRET_URLS = {
    "password-in-query": (f"redis://localhost:6379/0?username=nobody&password={SECRET}", 1),
    "password-in-sqlite-url": (f"sqlite://user:{SECRET}@host/x.db", 2),
    "non-numeric-port": (f"redis://user:{SECRET}@host:abc/0", 2),
    "broken-ipv6-host": (f"redis://user:{SECRET}@[::1/0", 2),
    "at-sign-in-password": (f"redis://nobody:{SECRET}@x@localhost:6379/0", 1),
    "slash-in-password": (f"redis://user:{SECRET}/x@host/0", 2),
    "token-as-user-bad-port": (f"nats://{SECRET}@localhost:abc", 2),
    "sqlite-query-secret": (f"sqlite:///q.db?token={SECRET}", 2),
}
SECRET_COMMANDS = {
    "worker": ["worker", "procs:echo"],
    "enqueue": ["enqueue", "1"],
    "stats": ["stats"],
    "dead-letters-list": ["dead-letters", "list"],
}


@pytest.mark.parametrize("command", list(SECRET_COMMANDS))
@pytest.mark.parametrize("url", list(SECRET_URLS))
def test_an_unusable_queue_url_is_refused_in_one_line_without_printing_its_credentials(
    workdir: Path, url: str, command: str
) -> None:
    queue_url, exit_code = SECRET_URLS[url]
    done = run_cli(workdir, *SECRET_COMMANDS[command], "--queue", queue_url)
    output = done.stdout + done.stderr
    assert SECRET not in output, f"the secret was printed: {output!r}"
    assert SECRET[:7] not in output, f"part of the secret was printed: {output!r}"
    one_line_error(done)
    assert done.returncode == exit_code, (done.returncode, output)


LEAKY_QUEUE = '''
from microbatching.errors import QueueError
from microbatching.queues import SQLiteQueue

class LeakyQueue(SQLiteQueue):
    """A queue whose client puts the whole URL in its errors, as some clients do."""

    def __init__(self, url, **options):
        self._leaky_url = url
        super().__init__("sqlite:///leaky.db", **options)

    async def _stats(self):
        raise QueueError(f"cannot reach {self._leaky_url}: connection refused")

    async def _enqueue(self, messages):
        raise QueueError(f"cannot reach {self._leaky_url}: connection refused")

    async def _dead_letters(self, limit):
        raise QueueError(f"cannot reach {self._leaky_url}: connection refused")
'''
RUN_WITH_LEAKY = (
    "import sys; from microbatching.queues import register_scheme; "
    "register_scheme('leaky', 'leakyq', 'LeakyQueue'); "
    "from microbatching.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("command", list(SECRET_COMMANDS))
def test_a_queue_client_error_that_repeats_the_url_is_scrubbed(workdir: Path, command: str) -> None:
    (workdir / "leakyq.py").write_text(LEAKY_QUEUE)
    url = f"leaky://user:{SECRET}@host/0?token={SECRET}"
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITH_LEAKY, *SECRET_COMMANDS[command], "--queue", url],
        cwd=workdir, capture_output=True, text=True, timeout=20,
        env=with_pythonpath(workdir),
    )  # fmt: skip
    assert SECRET not in done.stdout + done.stderr, done.stderr
    assert "connection refused" in one_line_error(done)
    assert done.returncode == 1


# -- the metrics server ------------------------------------------------------------------------------


def _listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses with a TCP socket listening on ``port``, from /proc/net/tcp and tcp6 (Linux)."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            # Each 32-bit word is in host (little-endian) order.
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
            found.append(ipaddress.ip_address(raw))
    return found


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _listening_on(workdir: Path, *options: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    port = free_port()
    with worker(
        workdir, "procs:echo", "--queue", "sqlite:///q.db", "--metrics-port", str(port), *options
    ) as p:
        deadline = time.monotonic() + 10
        while not _listening_addresses(port) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        addresses = _listening_addresses(port)
        p.send_signal(signal.SIGTERM)
        exit_within(p, 10)
    assert addresses, f"nothing listens on port {port} (worker exit code {p.poll()})"
    return addresses


needs_proc_net = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from /proc/net/tcp"
)


@needs_proc_net
def test_metrics_server_listens_on_loopback_only_by_default(workdir: Path) -> None:
    pytest.importorskip("prometheus_client")
    exposed = [str(address) for address in _listening_on(workdir) if not _is_loopback(address)]
    assert not exposed, f"--metrics-port without --metrics-addr listens on {exposed}"


@needs_proc_net
def test_metrics_addr_0000_listens_on_every_interface(workdir: Path) -> None:
    pytest.importorskip("prometheus_client")
    addresses = _listening_on(workdir, "--metrics-addr", "0.0.0.0")
    assert ipaddress.ip_address("0.0.0.0") in addresses, addresses


def test_worker_help_gives_loopback_as_the_metrics_address_default(workdir: Path) -> None:
    done = run_cli(workdir, "worker", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "default 0.0.0.0" not in text, text
    assert "default 127.0.0.1" in text, text


def test_metrics_port_without_prometheus_client_is_one_line_and_claims_nothing(workdir: Path) -> None:
    stub = workdir / "stub" / "prometheus_client"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    enqueue(workdir, "1")
    done = run_cli(
        workdir, "worker", "procs:echo", "--queue", "sqlite:///q.db", "--metrics-port", "9",
        env=with_pythonpath(workdir / "stub"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'microbatching[prometheus]'" in one_line_error(done)
    assert stats_of(workdir)["pending"] == 1


def test_metrics_port_in_use_is_one_line_and_claims_nothing(workdir: Path) -> None:
    pytest.importorskip("prometheus_client")
    enqueue(workdir, "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            workdir, "worker", "procs:echo", "--queue", "sqlite:///q.db", "--metrics-port", str(port)
        )
    assert done.returncode == 2, done.stderr
    assert f"--metrics-port {port}: cannot listen" in one_line_error(done)
    assert stats_of(workdir)["pending"] == 1


# -- paths that are not a queue ---------------------------------------------------------------------


def _make_unusable(kind: str, workdir: Path) -> tuple[str, Path]:
    """A queue path that is not a usable queue, and the path whose contents must stay untouched."""
    if kind == "random-bytes":
        target = workdir / "random.bin"
        target.write_bytes(os.urandom(4096))
        return "random.bin", target
    if kind == "directory":
        target = workdir / "adir"
        target.mkdir()
        (target / "keep.txt").write_text("keep")
        return "adir", target
    if kind == "under-a-regular-file":
        target = workdir / "regular"
        target.write_text("a regular file\n")
        return "regular/q.db", target
    target = workdir / "other.db"  # an application's database with its own mb_jobs table
    conn = sqlite3.connect(target)
    conn.execute("CREATE TABLE mb_jobs (name TEXT, value TEXT)")
    conn.execute("INSERT INTO mb_jobs VALUES ('a', 'b')")
    conn.commit()
    conn.close()
    return "other.db", target


def _contents(path: Path) -> Any:
    if path.is_dir():
        return _snapshot(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


UNUSABLE_COMMANDS = {
    "stats": ["stats"],
    "dead-letters-list": ["dead-letters", "list"],
    "dead-letters-purge": ["dead-letters", "purge", "--all"],
    "enqueue": ["enqueue", "1"],
    "worker-until-empty": ["worker", "procs:echo", "--until-empty"],
    "worker": ["worker", "procs:echo"],
}


@pytest.mark.parametrize("command", list(UNUSABLE_COMMANDS))
@pytest.mark.parametrize(
    "kind", ["random-bytes", "directory", "under-a-regular-file", "foreign-mb_jobs-table"]
)
def test_a_path_that_is_not_a_queue_is_refused_in_one_line_with_exit_2(
    workdir: Path, kind: str, command: str
) -> None:
    relative, target = _make_unusable(kind, workdir)
    before = _contents(target)
    began = time.monotonic()
    done = run_cli(workdir, *UNUSABLE_COMMANDS[command], "--queue", f"sqlite:///{relative}", timeout=10)
    elapsed = time.monotonic() - began
    assert relative in one_line_error(done)
    assert done.returncode == 2, (done.returncode, done.stderr[-1000:])
    assert elapsed < 5
    assert _contents(target) == before, f"{relative} was changed"


# -- failures are visible ----------------------------------------------------------------------------


def test_dead_letters_are_logged_with_id_attempts_and_traceback_and_exit_4(workdir: Path) -> None:
    jobs = [json.dumps({"id": f"job-{i}", "data": f"private-data-{i}"}) for i in range(2)]
    assert run_cli(workdir, "enqueue", "--queue", "sqlite:///q.db", "--with-ids", *jobs).returncode == 0
    done = run_cli(
        workdir, "worker", "procs:kaput", "--queue", "sqlite:///q.db", "--batch-interval", "0.01",
        "--max-attempts", "2", "--retry-delay", "0.01", "--until-empty",
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    err = done.stderr
    assert "private-data" not in err  # never the job's data
    assert re.search(
        r"WARNING microbatching\.worker: batch \d+ of 2 jobs failed: RuntimeError: kaput", err
    ), err
    assert re.search(
        r"INFO microbatching\.worker: job 'job-0' failed attempt 1 of 2: RuntimeError: kaput", err
    )
    dead = re.search(
        r"ERROR microbatching\.worker: job 'job-0' dead-lettered after 2 attempts: RuntimeError", err
    )
    assert dead, err
    assert 'procs.py", line' in err and 'raise RuntimeError("kaput")' in err  # the traceback
    assert "2 jobs were dead-lettered in this run" in err.strip().splitlines()[-1]


def test_dead_letters_list_shows_when_and_with_traceback_the_stored_traceback(workdir: Path) -> None:
    enqueue(workdir, "1")
    before = time.time()
    done = run_cli(
        workdir, "worker", "procs:kaput", "--queue", "sqlite:///q.db", "--batch-interval", "0.01",
        "--max-attempts", "1", "--until-empty", "--quiet",
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    listing = run_cli(workdir, "dead-letters", "list", "--queue", "sqlite:///q.db")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(before))
    assert f"failed={stamp}" in listing.stdout, listing.stdout
    assert "Traceback" not in listing.stdout
    traced = run_cli(workdir, "dead-letters", "list", "--queue", "sqlite:///q.db", "--traceback")
    assert 'raise RuntimeError("kaput")' in traced.stdout, traced.stdout
    as_json = json.loads(
        run_cli(workdir, "dead-letters", "list", "--queue", "sqlite:///q.db", "--json").stdout
    )
    assert 'raise RuntimeError("kaput")' in as_json["traceback"]
    assert before - 1 <= as_json["failed_at"] <= time.time()


def test_log_level_debug_shows_the_library_line_of_each_batch(workdir: Path) -> None:
    enqueue(workdir, "1", "2")
    done = run_cli(
        workdir, "worker", "procs:echo", "--queue", "sqlite:///q.db", "--batch-interval", "0.01",
        "--until-empty", "--log-level", "DEBUG",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"DEBUG microbatching: batch 1 done: 2 jobs", done.stderr), done.stderr
    quiet = run_cli(workdir, "worker", "procs:echo", "--queue", "sqlite:///q.db", "--until-empty",
                    "--log-level", "warning")  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    bad = run_cli(workdir, "worker", "procs:echo", "--log-level", "LOUD")
    assert bad.returncode == 2 and "--log-level" in one_line_error(bad)


# -- edges of the command line -------------------------------------------------------------------------


def test_a_plain_path_is_a_sqlite_queue(workdir: Path) -> None:
    enqueue(workdir, "1", "2", queue="live.db")
    assert (workdir / "live.db").is_file()
    done = run_cli(
        workdir, "worker", "procs:echo", "--queue", "live.db", "--until-empty", "--batch-interval", "0"
    )
    assert done.returncode == 0, done.stderr
    assert stats_of(workdir, "live.db")["done"] == 2
    assert stats_of(workdir, "sqlite:///live.db")["done"] == 2


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-interval", "inf", "--batch-interval must be finite and >= 0, got inf"),
        ("--batch-interval", "nan", "--batch-interval must be finite and >= 0, got nan"),
        ("--batch-interval", "-1", "--batch-interval must be finite and >= 0, got -1.0"),
        ("--drain-timeout", "0", "--drain-timeout must be finite and > 0, got 0.0"),
        ("--lease", "-5", "--lease must be finite and > 0, got -5.0"),
        ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
        ("--concurrency", "-2", "--concurrency must be >= 1, got -2"),
        ("--metrics-port", "99999", "--metrics-port must be a TCP port, 0 to 65535, got 99999"),
        ("--batch-size", "many", "argument --batch-size: invalid int value: 'many'"),
    ],
)
def test_bad_worker_options_are_one_line_with_exit_2(
    workdir: Path, option: str, value: str, message: str
) -> None:
    done = run_cli(workdir, "worker", "procs:echo", "--queue", "sqlite:///q.db", option, value)
    assert done.returncode == 2
    assert message in one_line_error(done)
    assert not (workdir / "q.db").exists()  # refused before the queue was even opened


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def broken(:\n    pass\n", "SyntaxError in"),
        ("import os\nraise RuntimeError('no config')\n", "raised RuntimeError: no config ("),
        ("import a_module_that_is_not_there\n", "No module named 'a_module_that_is_not_there'"),
    ],
    ids=["syntax-error", "raises-at-import", "imports-a-missing-module"],
)
def test_a_processor_module_that_cannot_be_imported_is_one_line_with_exit_2(
    workdir: Path, source: str, message: str
) -> None:
    (workdir / "badprocs.py").write_text(source)
    done = run_cli(workdir, "worker", "badprocs:f", "--queue", "sqlite:///q.db")
    assert done.returncode == 2
    line = one_line_error(done)
    assert message in line and "badprocs" in line, line


def test_requeue_of_an_unknown_key_says_so_and_exits_1(workdir: Path) -> None:
    enqueue(workdir, "1")
    done = run_cli(workdir, "dead-letters", "requeue", "NO-SUCH-KEY", "--queue", "sqlite:///q.db")
    assert done.returncode == 1
    assert "no dead letter has the key 'NO-SUCH-KEY'" in one_line_error(done)
    assert "requeued" not in done.stdout


def test_counts_of_one_are_singular(workdir: Path) -> None:
    done = run_cli(workdir, "enqueue", "--queue", "sqlite:///q.db", "1")
    assert done.stdout.strip() == "enqueued 1 job on sqlite:///q.db"
    worked = run_cli(workdir, "worker", "procs:kaput", "--queue", "sqlite:///q.db", "--max-attempts", "1",
                     "--until-empty", "--batch-interval", "0")  # fmt: skip
    assert "batch 1 of 1 job failed" in worked.stderr, worked.stderr
    assert "dead-lettered after 1 attempt:" in worked.stderr
    assert "1 job was dead-lettered in this run" in worked.stderr
    key = json.loads(run_cli(workdir, "dead-letters", "list", "--json", "--queue", "sqlite:///q.db").stdout)[
        "key"
    ]
    requeued = run_cli(workdir, "dead-letters", "requeue", key, "--queue", "sqlite:///q.db")
    assert requeued.stdout.strip() == "requeued 1 dead letter"


def test_enqueue_of_a_bare_word_hints_at_json_quotes(workdir: Path) -> None:
    done = run_cli(workdir, "enqueue", "--queue", "sqlite:///q.db", "hello")
    assert done.returncode == 2
    line = one_line_error(done)
    assert "argument 1 is not JSON" in line and """'"hello"'""" in line, line
    assert not (workdir / "q.db").exists()


def test_enqueue_at_a_terminal_prompts_and_ctrl_c_exits_130(workdir: Path) -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "microbatching", "enqueue", "--queue", "sqlite:///q.db"],
        cwd=workdir, stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(follower)
    try:
        assert process.stderr is not None
        prompt = process.stderr.readline()
        assert "one JSON value per line" in prompt and "Ctrl-D" in prompt, prompt
        os.write(leader, b"1\n")
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)  # what Ctrl-C at the terminal sends
        _, rest = process.communicate(timeout=10)
    finally:
        os.close(leader)
    assert process.returncode == 130
    assert "Traceback" not in rest
    assert rest.strip().splitlines() == ["microbatching enqueue: interrupted: nothing was enqueued"]
    assert not (workdir / "q.db").exists()


def _read_all(leader: int) -> bytes:
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    return output


def test_the_live_line_fits_80_columns_and_shows_the_backlog(workdir: Path) -> None:
    done = run_cli(
        workdir, "enqueue", "--queue", "sqlite:///q.db", input="".join(f"{i}\n" for i in range(3000))
    )
    assert done.returncode == 0
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "microbatching", "worker", "procs:steady", "--queue", "sqlite:///q.db",
         "--batch-size", "100", "--batch-interval", "0.01", "--until-empty"],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower, env=env,
    )  # fmt: skip
    os.close(follower)
    output = _read_all(leader).decode()
    os.close(leader)
    assert process.wait(timeout=30) == 0
    # Each redraw clears the line and writes the figures without a newline; a log record
    # clears the line too, then ends with one.
    live = [part for part in output.split("\r\x1b[K")[1:] if part and "\n" not in part]
    assert len(live) >= 3, output
    assert max(len(line) for line in live) < 80, max(live, key=len)
    assert any("backlog" in line for line in live), live


def test_the_rate_of_a_steady_stream_reads_steady() -> None:
    """250 jobs/s finishing in batches of 100, read every 0.5 s: per-interval counts are 100 or 200."""
    from microbatching.worker.progress import Rate

    rate, readings = Rate(), []
    for step in range(80):
        now = step * 0.5
        finished = int(now * 250) // 100 * 100  # whole batches only
        readings.append(rate.update(now, finished))
    settled = readings[20:]
    assert all(225 <= reading <= 275 for reading in settled), [round(r) for r in settled]


def test_demo_into_a_closed_pipe_exits_quietly(workdir: Path) -> None:
    done = subprocess.run(
        f"{sys.executable} -m microbatching demo | head -3", shell=True, cwd=workdir,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert len(done.stdout.splitlines()) == 3
    assert done.stderr == "", done.stderr


def test_stats_interval_repeats_until_ctrl_c_then_exits_0(workdir: Path) -> None:
    enqueue(workdir, "1")
    process = subprocess.Popen(
        [sys.executable, "-m", "microbatching", "stats", "--queue", "sqlite:///q.db", "--json",
         "--interval", "0.2"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    snapshots = [json.loads(process.stdout.readline()) for _ in range(3)]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert [snapshot["pending"] for snapshot in snapshots] == [1, 1, 1]
    assert snapshots[0]["time"] < snapshots[1]["time"] < snapshots[2]["time"]


def test_stats_lists_the_live_workers(workdir: Path) -> None:
    enqueue(workdir, "1")
    with worker(workdir, "procs:echo", "--queue", "sqlite:///q.db", "--batch-interval", "0") as process:
        deadline, workers = time.monotonic() + 10, []
        while not workers and time.monotonic() < deadline:
            workers = stats_of(workdir)["workers"]
            time.sleep(0.1)
        text = run_cli(workdir, "stats", "--queue", "sqlite:///q.db").stdout
        process.send_signal(signal.SIGTERM)
        assert exit_within(process, 10) == 0
    assert [(w["pid"], w["processor"]) for w in workers] == [(process.pid, "procs:echo")]
    assert re.search(rf"workers\s+1\n\s+\S+:{process.pid}  procs:echo  up ", text), text
    assert stats_of(workdir)["workers"] == []  # a worker that stops takes itself off the list


def test_fit_drops_the_least_important_figures_first_then_cuts() -> None:
    from microbatching.worker.progress import fit

    fields = ["done 1,000", "250 jobs/s", "backlog 9,000", "failed 0"]
    assert fit(fields, 80) == "done 1,000  250 jobs/s  backlog 9,000  failed 0"
    assert fit(fields, 40) == "done 1,000  250 jobs/s  backlog 9,000"
    assert fit(fields, 8) == "done 1,"
