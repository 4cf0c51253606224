"""The cases of the conformance suite (see :mod:`microbatching.testing`)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from .._claims import Lease, QueueCapabilities
from .._job import Job
from .._retry import RetryPolicy
from .._serialization import PayloadTooLargeError, SerializationError
from .._sync import MicroBatching
from ..errors import JobFailedError
from ..interfaces import ClaimQueue

__all__ = ["QueueConformance"]

T = TypeVar("T")

#: Capabilities assumed for a queue that is not a ClaimQueue: none of the claim-level ones.
_PUSH_QUEUE = QueueCapabilities(
    durable=False,
    lease_expiry=False,
    lease_tokens=False,
    delayed_retry=False,
    dead_letters=False,
    shared=False,
)


class QueueConformance:
    """Base class of the conformance suite; subclass it and implement :meth:`make_queue`.

    ``lease`` is the short lease (seconds) the lease cases use; raise it for a queue whose
    lease granularity is coarser.  ``patience`` bounds how long a case waits for a job to
    come back (after a lease runs out, or a consumer vanished).
    """

    lease: float = 0.4
    patience: float = 10.0
    queue_name: str
    tmp_path: Any

    def make_queue(self) -> Any:
        """A new handle on the queue under test (each call, the same queue within one test).

        Use ``self.queue_name`` (unique per test) or ``self.tmp_path`` to keep tests apart.
        """
        raise NotImplementedError("implement make_queue() to return the queue under test")

    async def vanish(self, queue: Any) -> None:
        """Make a consumer disappear without settling its jobs.

        The default drops the handle and relies on the lease running out; override it for
        a broker that redelivers when the connection closes (close it abruptly here).
        """

    @pytest.fixture(autouse=True)
    def _conformance_setup(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.queue_name = f"mb-conformance-{uuid.uuid4().hex[:12]}"

    # -- helpers ----------------------------------------------------------------------------------

    def capabilities(self) -> QueueCapabilities:
        """What the queue under test declares."""
        probe = self.make_queue()
        caps: QueueCapabilities = getattr(probe, "capabilities", _PUSH_QUEUE)
        if isinstance(probe, ClaimQueue):
            _run(probe.close())
        return caps

    def require(self, capability: str) -> None:
        """Skip the running case unless the queue is a ClaimQueue declaring ``capability``."""
        probe = self.make_queue()
        if not isinstance(probe, ClaimQueue):
            pytest.skip(
                f"{type(probe).__name__} is a push queue (add/process), not a ClaimQueue: it hands jobs "
                "straight to the batcher and keeps none it could lease, redeliver, count attempts of "
                "or dead-letter; the batcher retries and fails its jobs in memory"
            )
        _run(probe.close())
        if capability and not getattr(probe.capabilities, capability):
            pytest.skip(f"{type(probe).__name__} declares {capability}=False")

    def claiming(self, body: Callable[[Callable[[], ClaimQueue]], Awaitable[None]]) -> None:
        """Run ``body(open_queue)`` on a fresh event loop; every handle it opens is closed after."""
        opened: list[ClaimQueue] = []

        def open_queue() -> ClaimQueue:
            queue = self.make_queue()
            opened.append(queue)
            return queue  # type: ignore[no-any-return]

        async def main() -> None:
            try:
                await body(open_queue)
            finally:
                for queue in opened:
                    await queue.close()

        _run(main())

    async def claim_eventually(
        self, queue: ClaimQueue, count: int, lease: float, **kw: Any
    ) -> list[Job[Any]]:
        """Claim until ``count`` jobs came (or ``patience`` ran out)."""
        jobs: list[Job[Any]] = []
        deadline = time.monotonic() + self.patience
        while len(jobs) < count and time.monotonic() < deadline:
            jobs += await queue.claim(count - len(jobs), lease, **kw)
            if len(jobs) < count:
                await asyncio.sleep(0.02)
        return jobs

    def batcher(self, processor: Any, **options: Any) -> MicroBatching:
        """A started :class:`MicroBatching` on a new handle of the queue under test."""
        options.setdefault("batch_interval", 0.01)
        mb = MicroBatching(self.make_queue(), processor, **options)
        mb.start()
        return mb

    # == batcher-level cases: every queue ==========================================================

    def test_add_and_deliver(self) -> None:
        with self.batcher(lambda jobs: [job.data * 2 for job in jobs]) as mb:
            _equal(mb.submit_job(Job(1, 21)).result(timeout=self.patience), 42)

    def test_bulk_add_processes_every_job_exactly_once(self) -> None:
        seen: list[Any] = []
        sizes: list[int] = []
        lock = threading.Lock()

        def process(jobs: list[Job[Any]]) -> list[Any]:
            with lock:
                seen.extend(job.id for job in jobs)
                sizes.append(len(jobs))
            return [job.data + 1 for job in jobs]

        with self.batcher(process, batch_size=10) as mb:
            handles = [mb.submit_job(Job(i, i)) for i in range(250)]
            _equal([h.result(timeout=self.patience) for h in handles], [i + 1 for i in range(250)])
        _equal(sorted(seen), list(range(250)))
        _expect(max(sizes) <= 10, "max(sizes) <= 10")

    def test_retry_comes_back_through_the_queue_after_its_delay(self) -> None:
        starts: list[tuple[int, float]] = []

        def process(jobs: list[Job[Any]]) -> list[Any]:
            starts.extend((job.attempts, time.monotonic()) for job in jobs)
            return [ConnectionError("flaky") if job.attempts == 1 else "ok" for job in jobs]

        policy = RetryPolicy(max_attempts=3, base_delay=0.3, jitter=0.0)
        with self.batcher(process, retry=policy) as mb:
            _equal(mb.submit_job(Job("r", None)).result(timeout=self.patience), "ok")
        _equal([attempt for attempt, _ in starts], [1, 2])
        _expect(starts[1][1] - starts[0][1] >= 0.3 - 0.02, "starts[1][1] - starts[0][1] >= 0.3 - 0.02")

    def test_final_failure_after_the_last_attempt(self) -> None:
        attempts: list[int] = []

        def process(jobs: list[Job[Any]]) -> list[Any]:
            attempts.extend(job.attempts for job in jobs)
            return [ValueError(f"bad {job.id}") for job in jobs]

        with self.batcher(process, retry=RetryPolicy(max_attempts=3, base_delay=0.01)) as mb:
            handle = mb.submit_job(Job("poison", {"x": 1}))
            with pytest.raises(JobFailedError) as failure:
                handle.result(timeout=self.patience)
        _equal(failure.value.attempts, 3)
        _equal(attempts, [1, 2, 3])
        if getattr(getattr(mb.queue, "capabilities", _PUSH_QUEUE), "dead_letters", False):
            dead = _run(_dead_letters(self.make_queue()))
            _equal([(d.job_id, d.data, d.attempts) for d in dead], [("poison", {"x": 1}, 3)])
            _expect("ValueError: bad poison" in dead[0].error, '"ValueError: bad poison" in dead[0].error')

    def test_shutdown_drains_every_accepted_job(self) -> None:
        mb = self.batcher(lambda jobs: [job.data for job in jobs], batch_size=7, batch_interval=30.0)
        handles = [mb.submit_job(Job(i, i)) for i in range(30)]
        mb.shutdown()  # flushes the partial batch at once, no 30 s wait
        _expect(all(h.done() for h in handles), "all(h.done() for h in handles)")
        _equal([h.result(timeout=0) for h in handles], list(range(30)))

    def test_unencodable_data_is_refused_at_submit_naming_the_job(self) -> None:
        self.require("")
        with self.batcher(lambda jobs: [None for _ in jobs]) as mb:
            with pytest.raises(SerializationError, match="'not-json'"):
                mb.submit_job(Job("not-json", object()))
            limit = getattr(mb.queue, "max_payload_bytes", None)
            if limit is not None:
                with pytest.raises(PayloadTooLargeError, match="'huge'"):
                    mb.submit_job(Job("huge", "x" * (limit + 1)))
            _equal(mb.submit_job(Job("fine", [1, 2])).result(timeout=self.patience), None)
        _equal(mb.stats().submitted, 1)

    # == claim-level cases: ClaimQueue implementations =============================================

    def test_enqueue_claim_ack(self) -> None:
        self.require("")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            queue = open_queue()
            await queue.enqueue([queue.encode(Job(i, {"n": i})) for i in range(3)])
            jobs = await self.claim_eventually(queue, 3, 30.0)
            _equal(sorted((job.id, job.data["n"]) for job in jobs), [(0, 0), (1, 1), (2, 2)])
            _expect(all(isinstance(job.receipt, Lease) for job in jobs), "a Lease in each job's receipt")
            _equal([job.attempts for job in jobs], [1, 1, 1])
            _equal((await queue.stats()).in_flight, 3)
            _equal(await queue.ack(jobs), 3)
            stats = await queue.stats()
            _equal((stats.pending, stats.in_flight, stats.done), (0, 0, 3))
            _equal(await queue.claim(10, 30.0), [])

        self.claiming(body)

    def test_bulk_enqueue_and_claim_oldest_first(self) -> None:
        self.require("")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            queue = open_queue()
            await queue.enqueue([queue.encode(Job(i, i)) for i in range(500)])
            first = await self.claim_eventually(queue, 200, 30.0)
            rest = await self.claim_eventually(queue, 300, 30.0)
            _equal([job.id for job in first], list(range(200)))
            _equal(sorted(job.id for job in rest), list(range(200, 500)))
            _equal(await queue.ack(first + rest), 500)

        self.claiming(body)

    def test_a_claimed_job_stays_in_the_queue_until_acknowledged(self) -> None:
        self.require("")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            queue = open_queue()
            await queue.enqueue([queue.encode(Job("a", 1))])
            _equal(len(await self.claim_eventually(queue, 1, self.lease)), 1)
            stats = await queue.stats()
            _equal((stats.in_flight, stats.done), (1, 0))
            await self.vanish(queue)
            (again,) = await self.claim_eventually(open_queue(), 1, 30.0)
            _equal(again.id, "a")

        self.claiming(body)

    def test_redelivery_after_the_consumer_vanished(self) -> None:
        self.require("")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            producer, lost, survivor = open_queue(), open_queue(), open_queue()
            await producer.enqueue([producer.encode(Job(i, i)) for i in range(5)])
            taken = await self.claim_eventually(lost, 5, self.lease)
            _equal(len(taken), 5)
            await self.vanish(lost)
            back = await self.claim_eventually(survivor, 5, 30.0)
            _equal(sorted(job.id for job in back), list(range(5)))
            _equal({(job.attempts, job.receipt.recovered) for job in back}, {(2, 1)})
            _equal(await survivor.ack(back), 5)

        self.claiming(body)

    def test_no_job_is_delivered_twice_while_its_lease_is_live(self) -> None:
        self.require("shared")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            producer = open_queue()
            await producer.enqueue([producer.encode(Job(i, i)) for i in range(400)])
            consumers = [open_queue() for _ in range(4)]

            async def consume(queue: ClaimQueue) -> list[Any]:
                got: list[Any] = []
                for _ in range(20):
                    got += [job.id for job in await queue.claim(17, 30.0)]
                    await asyncio.sleep(0)
                return got

            results = await asyncio.gather(*(consume(queue) for queue in consumers))
            everything = [job_id for got in results for job_id in got]
            _equal(len(everything), 400)
            _equal(len(set(everything)), 400)
            _equal(await consumers[0].claim(10, 30.0), [])

        self.claiming(body)

    def test_attempts_are_counted_by_the_queue(self) -> None:
        self.require("")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            queue = open_queue()
            await queue.enqueue([queue.encode(Job("j", None))])
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            _equal(job.attempts, 1)
            _equal(await queue.retry([job], [0.0]), 1)
            (job,) = await self.claim_eventually(open_queue(), 1, 30.0)
            _equal(job.attempts, 2)  # kept by the queue, seen by any consumer
            _equal(await queue.release([job]), 1)  # given back unattempted: no attempt spent
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            _equal(job.attempts, 2)

        self.claiming(body)

    def test_retry_waits_out_its_delay_in_the_queue(self) -> None:
        self.require("delayed_retry")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            queue = open_queue()
            await queue.enqueue([queue.encode(Job("d", None))])
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            retried_at = time.monotonic()
            _equal(await queue.retry([job], [0.5]), 1)
            _equal(await queue.claim(1, 30.0), [])
            _equal((await queue.stats()).delayed, 1)
            (again,) = await self.claim_eventually(queue, 1, 30.0)
            _expect(time.monotonic() - retried_at >= 0.5 - 0.02, "the retry delay (0.5 s) to be waited out")
            _equal(again.attempts, 2)

        self.claiming(body)

    def test_dead_letters_keep_the_last_error_and_can_be_requeued_or_purged(self) -> None:
        self.require("dead_letters")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            queue = open_queue()
            await queue.enqueue([queue.encode(Job(i, {"i": i})) for i in range(3)])
            jobs = await self.claim_eventually(queue, 3, 30.0)
            _equal(await queue.dead_letter([(job, f"ValueError: bad {job.id}") for job in jobs]), 3)
            dead = await queue.dead_letters()
            _equal(
                [(d.job_id, d.data, d.attempts, d.error) for d in dead],
                [(i, {"i": i}, 1, f"ValueError: bad {i}") for i in range(3)],
            )
            stats = await queue.stats()
            _equal((stats.dead, stats.pending, stats.in_flight), (3, 0, 0))
            _equal(await queue.requeue_dead([dead[0].key]), 1)
            (back,) = await self.claim_eventually(queue, 1, 30.0)
            _equal((back.id, back.attempts), (0, 1))  # attempts start over
            _equal(await queue.purge_dead(), 2)
            _equal(await queue.dead_letters(), [])

        self.claiming(body)

    def test_a_job_that_kills_its_consumer_is_dead_lettered_after_its_attempts(self) -> None:
        self.require("dead_letters")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            producer = open_queue()
            await producer.enqueue([producer.encode(Job("killer", None))])
            for attempt in (1, 2):
                consumer = open_queue()
                (job,) = await self.claim_eventually(consumer, 1, self.lease, max_attempts=2)
                _equal(job.attempts, attempt)
                await self.vanish(consumer)  # the job took its consumer down with it
            await asyncio.sleep(self.lease)
            deadline = time.monotonic() + self.patience
            while not await producer.dead_letters() and time.monotonic() < deadline:
                _equal(await producer.claim(1, 30.0, max_attempts=2), [])
                await asyncio.sleep(0.05)
            (dead,) = await producer.dead_letters()
            _equal((dead.job_id, dead.attempts), ("killer", 2))

        self.claiming(body)

    def test_a_late_ack_cannot_remove_a_job_leased_again(self) -> None:
        self.require("lease_tokens")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            slow, fast = open_queue(), open_queue()
            await slow.enqueue([slow.encode(Job("t", None))])
            (stale,) = await self.claim_eventually(slow, 1, self.lease)
            (fresh,) = await self.claim_eventually(fast, 1, 30.0)  # after the first lease ran out
            _expect(stale.receipt.token != fresh.receipt.token, "stale.receipt.token != fresh.receipt.token")
            _equal(await slow.ack([stale]), 0)
            _equal(await slow.retry([stale], [0.0]), 0)
            _equal(await slow.dead_letter([(stale, "late")]), 0)
            _equal(await slow.extend([stale], 30.0), 0)
            _equal((await fast.stats()).in_flight, 1)
            _equal(await fast.ack([fresh]), 1)

        self.claiming(body)

    def test_extending_a_lease_keeps_the_job(self) -> None:
        self.require("lease_expiry")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            holder, other = open_queue(), open_queue()
            await holder.enqueue([holder.encode(Job("x", None))])
            (job,) = await self.claim_eventually(holder, 1, self.lease)
            _equal(await holder.extend([job], 30.0), 1)
            await asyncio.sleep(self.lease * 1.5)
            _equal(await other.claim(1, 30.0), [])
            _equal(await holder.ack([job]), 1)

        self.claiming(body)

    def test_jobs_survive_closing_and_reopening(self) -> None:
        self.require("durable")

        async def body(open_queue: Callable[[], ClaimQueue]) -> None:
            first = open_queue()
            await first.enqueue([first.encode(Job("kept", {"a": [1, 2]}))])
            await first.close()
            await first.close()  # idempotent
            (job,) = await self.claim_eventually(open_queue(), 1, 30.0)
            _equal((job.id, job.data), ("kept", {"a": [1, 2]}))

        self.claiming(body)

    def test_shutdown_settles_everything_it_claimed(self) -> None:
        self.require("")
        mb = self.batcher(lambda jobs: [job.data for job in jobs], batch_size=5, batch_interval=30.0)
        handles = [mb.submit_job(Job(i, i)) for i in range(23)]
        mb.shutdown()
        _equal([h.result(timeout=0) for h in handles], list(range(23)))
        stats = _run(_stats(self.make_queue()))
        _equal((stats.pending, stats.in_flight, stats.delayed, stats.done), (0, 0, 0, 23))


async def _dead_letters(queue: ClaimQueue) -> list[Any]:
    try:
        return await queue.dead_letters()
    finally:
        await queue.close()


async def _stats(queue: ClaimQueue) -> Any:
    try:
        return await queue.stats()
    finally:
        await queue.close()


def _expect(condition: object, what: str) -> None:
    # Explicit checks, not assert: the suite must not pass vacuously under python -O.
    if not condition:
        pytest.fail(f"expected {what}")


def _equal(actual: object, expected: object) -> None:
    if actual != expected:
        pytest.fail(f"expected {expected!r}, got {actual!r}")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)
