"""NatsQueue on live NATS JetStream: what the conformance suite cannot say about this broker.

The shared server (127.0.0.1:4222) is only used, never stopped; the broker-failure and
credential tests start a private ``nats-server`` of their own on a free port with its own
store directory, and stop only that one.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, cut_tcp_from_server
from conftest import free_port, service_available

from microbatching import AsyncMicroBatching, Job
from microbatching.errors import InvalidQueueError, MicroBatchingError
from microbatching.queues import open_queue

if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") != "1":  # required: a missing client fails
    pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[nats]')")

import nats

from microbatching.queues.nats import NatsQueue

NATS = next(backend for backend in BACKENDS if backend.name == "nats")
SERVER_BINARY = shutil.which("nats-server") or "/usr/sbin/nats-server"
HERE = Path(__file__).parent
ROOT = HERE.parent


@pytest.fixture
def shared() -> Iterator[str]:
    """A fresh queue URL on the shared server; the queue is dropped afterwards."""
    NATS.check_available()
    url = f"nats://127.0.0.1:4222?stream=mb_test_{uuid.uuid4().hex[:10]}"
    yield url
    _drop(url)


def _drop(url: str) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.drop()
        finally:
            await queue.close()

    asyncio.run(main())


class PrivateServer:
    """A nats-server with JetStream of this test's own: free ports, its own store directory."""

    def __init__(self, store: Path, *auth: str) -> None:
        self.port, self.monitor = free_port(), free_port()
        self.store = store
        self.auth = auth
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [SERVER_BINARY, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor),
                   "-js", "-sd", str(self.store), *self.auth]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/healthz?js-enabled-only=true"):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the private nats-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def connections(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/connz") as answer:
            found: list[dict[str, Any]] = json.load(answer)["connections"]
            return found


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateServer]:
    if not os.path.exists(SERVER_BINARY):
        if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") == "1":
            pytest.fail("nats-server is not installed, and MICROBATCHING_REQUIRE_SERVICES=1 requires it")
        pytest.skip("nats-server is not installed: the private-server tests need it")
    server = PrivateServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.kill()


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# -- the stale acknowledgement --------------------------------------------------------------------


def test_jetstream_lets_a_late_ack_remove_the_message_another_consumer_holds(shared: str) -> None:
    """The broker's behaviour the lease guard exists for (nats-server 2.9): measured, not assumed."""

    async def main() -> tuple[int, int]:
        queue = open_queue(shared, lease=1.0)
        await queue.enqueue([queue.encode(Job("t", None))])
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            stream, consumer = queue.names.stream, queue.names.consumer  # type: ignore[attr-defined]
            psub = await nc.jetstream().pull_subscribe_bind(consumer, stream=stream)
            (stale,) = await psub.fetch(1, timeout=5)
            await asyncio.sleep(1.3)  # its AckWait runs out
            (fresh,) = await psub.fetch(1, timeout=5)
            await stale.ack_sync()  # the late ack of the expired delivery
            info = await nc.jetstream().consumer_info(stream, consumer)
            return fresh.metadata.num_delivered, info.num_ack_pending
        finally:
            await nc.close()
            await queue.close()

    delivered, still_held = _run(main())
    assert delivered == 2
    assert still_held == 0  # gone from under the consumer that holds it now


def test_a_settle_after_the_lease_never_reaches_a_job_claimed_again(shared: str) -> None:
    async def main() -> None:
        slow, fast = open_queue(shared, lease=1.0), open_queue(shared, lease=1.0)
        try:
            await slow.enqueue([slow.encode(Job("t", None))])
            (stale,) = await slow.claim(1)
            await asyncio.sleep(1.2)
            (fresh,) = await fast.claim(1, wait=5.0)
            assert (fresh.id, fresh.attempts, fresh.receipt.recovered) == ("t", 2, 1)
            assert await slow.ack([stale]) == 0
            assert await slow.retry([stale], [0.0]) == 0
            assert await slow.dead_letter([(stale, "late")]) == 0
            assert await slow.extend([stale]) == 0
            stats = await fast.stats()
            assert (stats.in_flight, stats.done, stats.dead) == (1, 0, 0)
            assert await fast.ack([fresh]) == 1
            assert (await fast.stats()).done == 1
        finally:
            await slow.close()
            await fast.close()

    _run(main())


def test_a_worker_that_cannot_settle_well_inside_its_lease_gives_the_job_up(shared: str) -> None:
    """Inside the lease but within its safety margin: not acknowledged late, it comes back."""

    async def main() -> None:
        holder, other = open_queue(shared, lease=1.0), open_queue(shared, lease=1.0)
        try:
            await holder.enqueue([holder.encode(Job("m", None))])
            (job,) = await holder.claim(1)
            await asyncio.sleep(1.0 - 0.2 / 2)  # the delivery is live, but the margin (0.2 s) is passed
            assert await holder.ack([job]) == 0
            (back,) = await other.claim(1, wait=5.0)
            assert (back.id, back.attempts) == ("m", 2)
            assert await other.ack([back]) == 1
        finally:
            await holder.close()
            await other.close()

    _run(main())


# -- bulk on the hot path ---------------------------------------------------------------------------


def test_round_trips_and_messages_per_batch(private: PrivateServer) -> None:
    """Counted on the wire: socket writes by the client, and the server's own message counts."""
    url = f"nats://{private.address}?stream=rt"

    async def main() -> dict[str, tuple[int, int, int]]:
        queue = open_queue(url)
        try:
            assert await queue.claim(1) == []  # connected, topology created, delayed jobs watched
            nc = queue._wire._nc  # type: ignore[attr-defined]
            writes = _count_writes(nc)
            figures: dict[str, tuple[int, int, int]] = {}

            async def measure(name: str, operation: Any) -> Any:
                before_writes, before = writes[0], _server_counts(private)
                result = await operation
                after = _server_counts(private)
                figures[name] = (writes[0] - before_writes, after[0] - before[0], after[1] - before[1])
                return result

            await measure("enqueue", queue.enqueue([queue.encode(Job(i, i)) for i in range(100)]))
            jobs = await measure("claim", queue.claim(100))
            assert len(jobs) == 100
            await measure("extend", queue.extend(jobs))
            assert await measure("ack", queue.ack(jobs)) == 100
            return figures
        finally:
            await queue.close()

    figures = _run(main())
    print(f"\nNATS ROUND TRIPS per batch of 100 (socket writes, messages in, messages out): {figures}")
    for name, (writes, _, _) in figures.items():
        assert writes <= 2, f"{name}: {writes} writes for a batch"
    # One message per job, no more (plus, at most, the delayed-job watcher's next pull request).
    assert figures["enqueue"][1] - 100 in (0, 1) and figures["ack"][1] - 100 in (0, 1)
    assert figures["claim"][1] in (1, 2)  # one pull request for the whole batch
    assert figures["claim"][2] == 100  # and the deliveries (a full batch needs no status)


def _count_writes(nc: Any) -> list[int]:
    """Count the client's socket writes (each flush of its outgoing buffer is one)."""
    counter = [0]
    transport = nc._transport
    for name in ("write", "writelines"):
        original = getattr(transport, name)

        def counted(*args: Any, _original: Any = original) -> Any:
            counter[0] += 1
            return _original(*args)

        setattr(transport, name, counted)
    return counter


def _server_counts(server: PrivateServer) -> tuple[int, int]:
    (ours,) = [c for c in server.connections() if c.get("name") == "microbatching"]
    return int(ours["in_msgs"]), int(ours["out_msgs"])


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_private_server_killed_and_restarted_mid_run_loses_no_acknowledged_job(
    private: PrivateServer, tmp_path: Path
) -> None:
    jobs = 3_000
    url = f"nats://{private.address}?stream=failover"
    _enqueue(url, jobs)
    logs = tmp_path / "effects"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{HERE / 'fault'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FAULT_LOG_DIR": str(logs), "FAULT_SLEEP": "0.02"}  # fmt: skip
    command = [sys.executable, "-m", "microbatching", "worker", "fault_processors:record", "--queue", url,
               "--batch-size", "50", "--batch-interval", "0.01", "--lease", "5", "--until-empty",
               "--quiet"]  # fmt: skip
    workers = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        _wait_for(lambda: _effects(logs).total() >= 600, 60)
        processed_at_kill = _effects(logs).total()
        private.kill()  # SIGKILL: no shutdown, no flush
        time.sleep(1.5)
        assert all(worker.poll() is None for worker in workers), "a worker gave up while NATS was down"
        private.start()  # same port, same store
        codes = [worker.wait(90) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    stderr = ""
    for worker in workers:
        assert worker.stderr is not None
        stderr += worker.stderr.read().decode()
        worker.stderr.close()
    counts = _effects(logs)
    stats, dead = _stats(url)
    figures = {"jobs": jobs, "processed_before_the_kill": processed_at_kill, "lost": jobs - len(counts),
               "duplicates": counts.total() - len(counts), "done": stats.done, "dead": len(dead),
               "exit_codes": codes}  # fmt: skip
    print(f"\nNATS BROKER FAILURE {json.dumps(figures)}")
    assert codes == [0, 0], stderr[-3000:]
    assert set(counts) == set(range(jobs))  # 0 lost
    assert (stats.pending, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
    assert "reconnected to NATS" in stderr


def test_connections_cut_by_the_server_mid_run_lose_nothing_and_acknowledge_nothing_twice(
    shared: str,
) -> None:
    jobs = 3_000
    _enqueue(shared, jobs)
    seen: collections.Counter[int] = collections.Counter()

    async def main() -> int:
        queue = open_queue(shared)

        async def process(batch: list[Job[int]]) -> list[int]:
            seen.update(job.id for job in batch)
            await asyncio.sleep(0.01)
            return [job.data for job in batch]

        cuts = 0
        async with AsyncMicroBatching(queue, process, batch_size=50, batch_interval=0.01) as mb:
            while sum(seen.values()) < jobs and cuts < 40:
                await asyncio.sleep(0.05)
                await cut_tcp_from_server(queue._wire.local_address(), 4222)  # type: ignore[attr-defined]
                cuts += 1
            await _until(lambda: sum(seen.values()) >= jobs and mb.stats().pending == 0)
        return cuts

    cuts = _run(main())
    stats, _ = _stats(shared)
    duplicates = seen.total() - len(seen)
    figures = {
        "jobs": jobs,
        "cuts": cuts,
        "lost": jobs - len(seen),
        "duplicates": duplicates,
        "done": stats.done,
    }
    print(f"\nNATS CUT CONNECTIONS {json.dumps(figures)}")
    assert cuts >= 5
    assert set(seen) == set(range(jobs))
    assert duplicates == 0  # every acknowledgement made it inside its lease, once
    assert stats.done == jobs
    assert (stats.pending, stats.in_flight, stats.dead) == (0, 0, 0)


async def _until(condition: Any) -> None:
    while not condition():  # noqa: ASYNC110 -- polls the batcher's stats, which have no event
        await asyncio.sleep(0.01)


def _wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _effects(logs: Path) -> collections.Counter[int]:
    counts: collections.Counter[int] = collections.Counter()
    for path in logs.glob("effects-*.log"):
        counts.update(int(line.split()[0]) for line in path.read_text().splitlines())
    return counts


def _enqueue(url: str, n: int) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.enqueue([queue.encode(Job(i, i)) for i in range(n)])
        finally:
            await queue.close()

    _run(main())


def _stats(url: str) -> Any:
    async def main() -> Any:
        queue = open_queue(url)
        try:
            return await queue.stats(), await queue.dead_letters(10_000)
        finally:
            await queue.close()

    return _run(main())


# -- credentials ------------------------------------------------------------------------------------


def test_credentials_never_reach_repr_errors_logs_or_stats(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not os.path.exists(SERVER_BINARY):
        pytest.skip("nats-server is not installed")
    secret = "s3cr3t-pw-42"
    server = PrivateServer(tmp_path / "js", "--user", "mbuser", "--pass", secret)
    server.start()
    try:
        good = f"nats://mbuser:{secret}@{server.address}?stream=creds"
        bad = f"nats://mbuser:wrong-{secret}@{server.address}?stream=creds&timeout=2"
        caplog.set_level(logging.DEBUG, logger="microbatching")

        async def main() -> list[str]:
            texts = []
            queue = open_queue(good)
            texts.append(repr(queue))
            await queue.enqueue([queue.encode(Job(1, 1))])
            await cut_tcp_from_server(queue._wire.local_address(), server.port)  # type: ignore[attr-defined]
            texts.append(str(await queue.stats()))
            await queue.close()
            refused = open_queue(bad)
            with pytest.raises(MicroBatchingError) as error:
                await refused.stats()
            texts.append(str(error.value))
            await refused.close()
            return texts

        texts = _run(main())
        cli = subprocess.run([sys.executable, "-m", "microbatching", "stats", "--queue", good],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        texts += [cli.stdout, cli.stderr, caplog.text]
        assert cli.returncode == 0, cli.stderr
        assert "mbuser:***@" in texts[0]
        for text in texts:
            assert secret not in text
        _drop(good)
    finally:
        server.kill()


# -- topology ---------------------------------------------------------------------------------------


def _stream_names() -> set[str]:
    async def main() -> set[str]:
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            answer = await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)
            return set(json.loads(answer.data).get("streams") or [])
        finally:
            await nc.close()

    return _run(main())  # type: ignore[no-any-return]


def test_eight_handles_creating_the_queue_at_once_all_succeed_and_drop_removes_it_all(shared: str) -> None:
    stream = shared.rsplit("=", 1)[1]

    async def main() -> Any:
        queues = [open_queue(shared) for _ in range(8)]
        try:
            await asyncio.gather(*(q.enqueue([q.encode(Job(i, i))]) for i, q in enumerate(queues)))
            return await queues[0].stats()
        finally:
            for queue in queues:
                await queue.close()

    stats = _run(main())
    assert stats.pending == 8
    assert {stream, f"{stream}-dead", f"{stream}-tally"} <= _stream_names()
    _drop(shared)
    assert not {name for name in _stream_names() if name.startswith(stream)}


def test_create_false_creates_nothing_and_says_the_queue_is_missing(shared: str) -> None:
    stream = shared.rsplit("=", 1)[1]

    async def main() -> None:
        queue = open_queue(shared, create=False)
        try:
            with pytest.raises(InvalidQueueError, match="no queue"):
                await queue.stats()
        finally:
            await queue.close()

    _run(main())
    assert not {name for name in _stream_names() if name.startswith(stream)}


def test_named_queues_on_one_server_stay_apart(shared: str) -> None:
    other = shared.replace("stream=", "stream=other_")

    async def main() -> tuple[list[Any], list[Any]]:
        first, second = open_queue(shared), open_queue(other)
        try:
            await first.enqueue([first.encode(Job("a", 1))])
            await second.enqueue([second.encode(Job("b", 2))])
            return [j.id for j in await first.claim(10)], [j.id for j in await second.claim(10)]
        finally:
            await first.close()
            await second.close()

    try:
        assert _run(main()) == (["a"], ["b"])
    finally:
        _drop(other)


def test_a_handle_given_a_lease_sets_the_ack_wait_and_one_given_none_adopts_it(shared: str) -> None:
    async def main() -> tuple[float, float]:
        setter, adopter = open_queue(shared, lease=2.5), open_queue(shared)
        try:
            await setter.stats()
            await adopter.stats()
            return setter.lease, adopter.lease
        finally:
            await setter.close()
            await adopter.close()

    assert _run(main()) == (2.5, 2.5)


# -- delays and ids ---------------------------------------------------------------------------------


def test_a_delayed_job_spends_no_attempt_while_it_waits(shared: str) -> None:
    async def main() -> tuple[float, int, int]:
        queue = open_queue(shared)
        try:
            put_at = time.monotonic()
            await queue.aput("later", delay=0.4)
            assert (await queue.stats()).delayed == 1
            (job,) = await queue.claim(1, wait=5.0)
            waited = time.monotonic() - put_at
            await queue.ack([job])
            return waited, job.attempts, job.receipt.recovered
        finally:
            await queue.close()

    waited, attempts, recovered = _run(main())
    assert waited >= 0.38
    assert (attempts, recovered) == (1, 0)


def test_put_with_an_id_is_deduplicated_for_the_duplicate_window_finished_or_not(shared: str) -> None:
    """What idempotent_enqueue=False means here: JetStream remembers message ids for a window."""
    url = f"{shared}&duplicate_window=1"

    async def main() -> list[Any]:
        queue = open_queue(url)
        try:
            await queue.aput("first", id="welcome-1")
            await queue.aput("again", id="welcome-1")  # inside the window: not stored
            (job,) = await queue.claim(5, wait=1.0)
            await queue.ack([job])
            await queue.aput("finished-but-remembered", id="welcome-1")
            assert await queue.claim(5, wait=0.3) == []
            await asyncio.sleep(1.2)  # the window is over
            await queue.aput("stored", id="welcome-1")
            (later,) = await queue.claim(5, wait=1.0)
            await queue.ack([later])
            return [job.data, later.data]
        finally:
            await queue.close()

    assert _run(main()) == ["first", "stored"]


# -- URLs and the extra -----------------------------------------------------------------------------


def test_url_options_are_checked() -> None:
    with pytest.raises(ValueError, match="not the path"):
        NatsQueue("nats://localhost:4222/jobs")
    with pytest.raises(ValueError, match="stream must be"):
        NatsQueue("nats://localhost:4222?stream=a.b")
    with pytest.raises(ValueError, match="unknown option"):
        NatsQueue("nats://localhost:4222?colour=red")
    with pytest.raises(ValueError, match="tls://"):
        NatsQueue("nats://localhost:4222?tls_ca=/nowhere.pem")
    queue = NatsQueue("tls://user:pw-secret@localhost:4222?stream=s&token=tok-secret")
    assert "pw-secret" not in repr(queue) and "tok-secret" not in repr(queue)
    assert isinstance(open_queue("tls://localhost:4222"), NatsQueue)


def test_without_nats_py_the_message_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "from microbatching.queues import open_queue\n"
        "try:\n    open_queue('nats://localhost:4222')\nexcept Exception as exc:\n    print(exc)\n"
        "try:\n    from microbatching.queues import NatsQueue\nexcept ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.count("pip install 'microbatching[nats]'") == 2, out


@pytest.mark.timeout(300)
def test_the_quick_benchmark_runs() -> None:
    service_available("127.0.0.1", 4222, "NATS")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "nats"],
                          capture_output=True, text=True, timeout=280)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "raw nats-py" in proc.stdout and "4 workers" in proc.stdout
