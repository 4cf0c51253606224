"""The cases of the conformance suite (see :mod:`microbatching.testing`)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from .._async import AsyncMicroBatching
from .._job import Job
from .._retry import RetryPolicy
from .._sync import MicroBatching
from ..errors import (
    JobCancelledError,
    JobFailedError,
    MicroBatchingError,
    PayloadTooLargeError,
    SerializationError,
)
from ..queues._base import ClaimQueue
from ..queues._types import Lease, Message, QueueCapabilities

__all__ = ["QueueConformance"]

T = TypeVar("T")
Opener = Callable[[], ClaimQueue]

#: Capabilities assumed for a queue that is not a ClaimQueue: none of the claim-level ones.
_PUSH_QUEUE = QueueCapabilities(
    durable=False,
    shared=False,
    lease_expiry=False,
    lease_tokens=False,
    delayed_retry=False,
    delayed_enqueue=False,
    dead_letters=False,
    idempotent_enqueue=False,
)


class QueueConformance:
    """Base class of the conformance suite; subclass it and implement :meth:`make_queue`.

    ``lease`` is the short lease (seconds) the lease cases use; raise it for a queue whose
    lease granularity is coarser.  ``patience`` bounds how long a case waits for a job to
    come back (after a lease runs out, or a consumer vanished).  Override :meth:`vanish`
    for a queue that redelivers when a connection closes, and :meth:`break_connection`
    to run the dropped-connection cases.  After each case the suite deletes the queue
    with ``drop()``, so nothing is left on the broker.
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

    async def break_connection(self, queue: Any) -> None:
        """Drop ``queue``'s connection from the server side (the queue must survive it).

        The default skips the cases that need it; a bundled queue's test kills the
        connection on the broker (``CLIENT KILL``, ``pg_terminate_backend``, ...).
        """
        pytest.skip(f"{type(self).__name__} has no break_connection() for {type(queue).__name__}")

    @pytest.fixture(autouse=True)
    def _conformance_setup(self, tmp_path: Any) -> Iterator[None]:
        self.tmp_path = tmp_path
        self.queue_name = f"mb_conformance_{uuid.uuid4().hex[:12]}"
        yield
        self._drop_queue()

    def _drop_queue(self) -> None:
        try:
            queue = self.make_queue()
        except Exception:  # the case itself reports what is wrong with the queue
            return
        if isinstance(queue, ClaimQueue):

            async def drop() -> None:
                try:
                    await queue.drop()
                finally:
                    await queue.close()

            _run(drop())

    # -- helpers ----------------------------------------------------------------------------------

    def capabilities(self) -> QueueCapabilities:
        """What the queue under test declares."""
        probe = self.make_queue()
        caps: QueueCapabilities = getattr(probe, "capabilities", _PUSH_QUEUE)
        if isinstance(probe, ClaimQueue):
            _run(probe.close())
        return caps

    def require(self, *capabilities: str) -> None:
        """Skip the running case unless the queue is a ClaimQueue declaring every one of ``capabilities``."""
        probe = self.make_queue()
        if not isinstance(probe, ClaimQueue):
            pytest.skip(
                f"{type(probe).__name__} is a push queue (add/process), not a ClaimQueue: it hands jobs "
                "straight to the batcher and keeps none it could lease, redeliver, count attempts of "
                "or dead-letter; the batcher retries and fails its jobs in memory"
            )
        _run(probe.close())
        for capability in capabilities:
            if not getattr(probe.capabilities, capability):
                pytest.skip(f"{type(probe).__name__} declares {capability}=False")

    def claiming(self, body: Callable[[Opener], Awaitable[None]]) -> None:
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

    async def _enqueue(self, queue: ClaimQueue, jobs: list[Job[Any]]) -> None:
        _equal(await queue.enqueue([queue.encode(job) for job in jobs]), len(jobs))

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
        mb = self.batcher(lambda jobs: [job.data for job in jobs], batch_size=7, batch_interval=9.0)
        handles = [mb.submit_job(Job(i, i)) for i in range(30)]
        mb.shutdown()  # flushes the partial batch at once, no 9 s wait
        _expect(all(h.done() for h in handles), "all(h.done() for h in handles)")
        _equal([h.result(timeout=0) for h in handles], list(range(30)))

    def test_unencodable_data_is_refused_at_submit_naming_the_job(self) -> None:
        self.require()
        with self.batcher(lambda jobs: [None for _ in jobs]) as mb:
            with pytest.raises(SerializationError, match="'not-json'"):
                mb.submit_job(Job("not-json", object()))
            limit = getattr(mb.queue, "max_payload_bytes", None)
            if limit is not None:
                with pytest.raises(PayloadTooLargeError, match="'huge'"):
                    mb.submit_job(Job("huge", "x" * (limit + 1)))
            _equal(mb.submit_job(Job("fine", [1, 2])).result(timeout=self.patience), None)
        _equal(mb.stats().submitted, 1)

    def test_an_async_batcher_on_the_queue(self) -> None:
        self.require()

        async def process(jobs: list[Job[Any]]) -> list[Any]:
            return [job.data["n"] ** 2 for job in jobs]

        async def main() -> list[Any]:
            async with AsyncMicroBatching(
                self.make_queue(), process, batch_size=8, batch_interval=0.01
            ) as mb:
                futures = [mb.submit_job_nowait(Job(i, {"n": i})) for i in range(40)]
                return list(await asyncio.gather(*futures))

        _equal(_run(main()), [i * i for i in range(40)])

    def test_a_batcher_processes_jobs_enqueued_by_others(self) -> None:
        self.require()

        async def produce() -> None:
            queue = self.make_queue()
            try:
                await self._enqueue(queue, [Job(i, i) for i in range(100)])
            finally:
                await queue.close()

        _run(produce())
        seen: list[int] = []
        done = threading.Event()

        def process(jobs: list[Job[Any]]) -> list[Any]:
            seen.extend(job.data for job in jobs)
            if len(seen) >= 100:
                done.set()
            return [None] * len(jobs)

        with self.batcher(process, batch_size=30):
            _expect(done.wait(self.patience), "the 100 jobs to be processed")
        _equal(sorted(seen), list(range(100)))
        stats = _run(_stats(self.make_queue()))
        _equal((stats.pending, _known(stats.in_flight)), (0, 0))
        _expect(stats.done in (100, None), "stats.done == 100 (or unknown)")

    def test_shutdown_settles_everything_it_claimed(self) -> None:
        self.require()
        mb = self.batcher(lambda jobs: [job.data for job in jobs], batch_size=5, batch_interval=9.0)
        handles = [mb.submit_job(Job(i, i)) for i in range(23)]
        mb.shutdown()
        _equal([h.result(timeout=0) for h in handles], list(range(23)))
        stats = _run(_stats(self.make_queue()))
        _equal((stats.pending, _known(stats.in_flight), stats.delayed), (0, 0, 0))
        _expect(stats.done in (23, None), "stats.done == 23 (or unknown)")

    def test_a_handle_whose_job_stays_queued_fails_saying_so(self) -> None:
        self.require("delayed_retry")

        def process(jobs: list[Job[Any]]) -> list[Any]:
            return [ConnectionError("down") for _ in jobs]

        retry = RetryPolicy(max_attempts=3, base_delay=60.0, jitter=0.0)
        mb = self.batcher(process, retry=retry)
        handle = mb.submit_job(Job("later", 1))
        deadline = time.monotonic() + self.patience
        while mb.stats().retried == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        mb.shutdown()
        with pytest.raises(JobCancelledError, match="'later' is still in the durable queue"):
            handle.result(timeout=0)
        stats = _run(_stats(self.make_queue()))
        _equal(_known(stats.in_flight), 0)
        _expect(stats.delayed in (1, None), "stats.delayed == 1 (or unknown)")

    def test_a_cancelled_shutdown_gives_claimed_jobs_back(self) -> None:
        self.require()
        started = asyncio.Event()

        async def process(jobs: list[Job[Any]]) -> list[Any]:
            started.set()
            await asyncio.sleep(60)
            return [None] * len(jobs)

        async def main() -> list[Any]:
            mb = AsyncMicroBatching(self.make_queue(), process, batch_size=2, batch_interval=0.01)
            futures = [mb.submit_job_nowait(Job(i, i)) for i in range(5)]
            await asyncio.wait_for(started.wait(), self.patience)
            await mb.shutdown(cancel=True)
            return list(await asyncio.gather(*futures, return_exceptions=True))

        outcomes = _run(main())
        _expect(
            all(isinstance(o, JobCancelledError) for o in outcomes), "every handle to fail JobCancelledError"
        )
        exact_attempts = self.capabilities().release_keeps_attempts

        async def reclaim(open_queue: Opener) -> None:
            jobs = await self.claim_eventually(open_queue(), 5, 30.0)
            _equal(sorted(job.id for job in jobs), list(range(5)))
            if exact_attempts:
                # The two jobs whose batch was running spent an attempt; the buffered ones did not.
                _equal(sorted(job.attempts for job in jobs), [1, 1, 1, 2, 2])

        self.claiming(reclaim)

    def test_leases_are_renewed_while_a_batch_runs(self) -> None:
        self.require("lease_expiry")
        stolen: list[Any] = []
        outer = self

        def process(jobs: list[Job[Any]]) -> list[Any]:
            async def try_to_steal() -> None:
                other = outer.make_queue()
                try:
                    for _ in range(int(self.lease * 5 / 0.2)):
                        stolen.extend(await other.claim(10, 30.0))
                        await asyncio.sleep(0.2)
                finally:
                    await other.close()

            asyncio.run(try_to_steal())  # several leases long
            return [None] * len(jobs)

        queue = self.make_queue()
        queue.lease = self.lease * 1.5
        with MicroBatching(queue, process, batch_interval=0.01) as mb:
            _equal(mb.submit_job(Job(1, 1)).result(timeout=self.patience * 3), None)
        _equal(stolen, [])

    # == claim-level cases: ClaimQueue implementations =============================================

    def test_enqueue_claim_ack(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job(i, {"n": i}) for i in range(3)])
            jobs = await self.claim_eventually(queue, 3, 30.0)
            _equal(sorted((job.id, job.data["n"]) for job in jobs), [(0, 0), (1, 1), (2, 2)])
            _expect(all(isinstance(job.receipt, Lease) for job in jobs), "a Lease in each job's receipt")
            _equal([job.attempts for job in jobs], [1, 1, 1])
            _expect((await queue.stats()).in_flight in (3, None), "in_flight == 3 (or unknown)")
            _equal(await queue.ack(jobs), 3)
            stats = await queue.stats()
            _equal((stats.pending, _known(stats.in_flight)), (0, 0))
            _expect(stats.done in (3, None), "done == 3 (or unknown)")
            _equal(await queue.claim(10, 30.0), [])

        self.claiming(body)

    def test_bulk_enqueue_and_claim_oldest_first(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job(i, i) for i in range(500)])
            first = await self.claim_eventually(queue, 200, 30.0)
            rest = await self.claim_eventually(queue, 300, 30.0)
            _equal([job.id for job in first], list(range(200)))
            _equal(sorted(job.id for job in rest), list(range(200, 500)))
            _equal(await queue.ack(first + rest), 500)

        self.claiming(body)

    def test_a_claim_waits_for_work_when_asked(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            consumer, producer = open_queue(), open_queue()
            started = time.monotonic()
            _equal(await consumer.claim(5, 30.0, wait=0.3), [])
            _expect(time.monotonic() - started >= 0.3 - 0.02, "an empty claim(wait=0.3) to wait 0.3 s")

            async def produce_later() -> None:
                await asyncio.sleep(0.2)
                await self._enqueue(producer, [Job("late", 1)])

            producing = asyncio.ensure_future(produce_later())
            started = time.monotonic()
            jobs = await consumer.claim(5, 30.0, wait=5.0)
            waited = time.monotonic() - started
            await producing
            _equal([job.id for job in jobs], ["late"])
            _expect(waited < 2.0, f"the claim to return soon after the job arrived (it took {waited:.2f} s)")
            await consumer.ack(jobs)

        self.claiming(body)

    def test_a_claimed_job_stays_in_the_queue_until_acknowledged(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job("a", 1)])
            _equal(len(await self.claim_eventually(queue, 1, self.lease)), 1)
            stats = await queue.stats()
            _expect(stats.in_flight in (1, None), "in_flight == 1 (or unknown)")
            _expect(stats.done in (0, None), "done == 0 (or unknown)")
            await self.vanish(queue)
            (again,) = await self.claim_eventually(open_queue(), 1, 30.0)
            _equal(again.id, "a")

        self.claiming(body)

    def test_redelivery_after_the_consumer_vanished(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            producer, lost, survivor = open_queue(), open_queue(), open_queue()
            await self._enqueue(producer, [Job(i, i) for i in range(5)])
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

        async def body(open_queue: Opener) -> None:
            producer = open_queue()
            await self._enqueue(producer, [Job(i, i) for i in range(400)])
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
        self.require()

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job("j", None)])
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            _equal(job.attempts, 1)
            _equal(await queue.retry([job], [0.0]), 1)
            (job,) = await self.claim_eventually(open_queue(), 1, 30.0)
            _equal(job.attempts, 2)  # kept by the queue, seen by any consumer

        self.claiming(body)

    def test_a_release_undoes_the_claims_attempt(self) -> None:
        self.require("release_keeps_attempts")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job("j", None)])
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            _equal(await queue.release([job]), 1)  # given back unattempted: no attempt spent
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            _equal(job.attempts, 1)

        self.claiming(body)

    def test_retry_waits_out_its_delay_in_the_queue(self) -> None:
        self.require("delayed_retry")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job("d", None)])
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            retried_at = time.monotonic()
            _equal(await queue.retry([job], [0.5]), 1)
            _equal(await queue.claim(1, 30.0), [])
            _expect((await queue.stats()).delayed in (1, None), "delayed == 1 (or unknown)")
            (again,) = await self.claim_eventually(queue, 1, 30.0)
            _expect(time.monotonic() - retried_at >= 0.5 - 0.02, "the retry delay (0.5 s) to be waited out")
            _equal(again.attempts, 2)

        self.claiming(body)

    def test_a_retry_delay_longer_than_the_lease_is_waited_out(self) -> None:
        self.require("delayed_retry", "lease_expiry")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job("slow", None)])
            (job,) = await self.claim_eventually(queue, 1, self.lease)
            delay = self.lease * 4
            retried_at = time.monotonic()
            _equal(await queue.retry([job], [delay]), 1)
            await asyncio.sleep(self.lease * 2)  # the old lease ran out long ago
            _equal(await queue.claim(1, 30.0), [])
            (again,) = await self.claim_eventually(queue, 1, 30.0)
            _expect(
                time.monotonic() - retried_at >= delay - 0.02, f"the retry delay ({delay} s) to be waited out"
            )
            _equal(again.attempts, 2)

        self.claiming(body)

    def test_dead_letters_keep_the_last_error_and_can_be_requeued_or_purged(self) -> None:
        self.require("dead_letters")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job(i, {"i": i}) for i in range(3)])
            jobs = sorted(await self.claim_eventually(queue, 3, 30.0), key=lambda job: job.id)
            _equal(await queue.dead_letter([(job, f"ValueError: bad {job.id}") for job in jobs]), 3)
            dead = await queue.dead_letters()
            _equal(
                sorted((d.job_id, d.data, d.attempts, d.error) for d in dead),
                [(i, {"i": i}, 1, f"ValueError: bad {i}") for i in range(3)],
            )
            _expect(all(d.failed_at > time.time() - 60 for d in dead), "failed_at to be the time of failure")
            stats = await queue.stats()
            _equal((stats.pending, _known(stats.in_flight)), (0, 0))
            _expect(stats.dead in (3, None), "dead == 3 (or unknown)")
            first = next(d for d in dead if d.job_id == 0)
            _equal(await queue.requeue_dead([first.key]), 1)
            (back,) = await self.claim_eventually(queue, 1, 30.0)
            _equal((back.id, back.attempts), (0, 1))  # attempts start over
            _equal(await queue.purge_dead(), 2)
            _equal(await queue.dead_letters(), [])

        self.claiming(body)

    def test_a_dead_letter_keeps_the_traceback_of_its_error(self) -> None:
        self.require("dead_letters")

        def failing_step() -> None:
            raise ValueError("bad record 7")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job(7, "record")])
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            try:
                failing_step()
            except ValueError as exc:
                error = exc
            _equal(await queue.dead_letter([(job, error)]), 1)
            (dead,) = await queue.dead_letters()
            _equal(dead.error, "ValueError: bad record 7")
            _expect(
                dead.traceback is not None and "failing_step" in dead.traceback, "the traceback to be kept"
            )

        self.claiming(body)

    def test_an_undecodable_job_goes_to_the_dead_letters_alone(self) -> None:
        self.require("dead_letters")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            good = [queue.encode(Job(i, i)) for i in range(3)]
            broken = Message(
                "broken-payload", queue.serializer.dumps("bad"), b"\xff\xfe not what was written"
            )
            _equal(await queue.enqueue([good[0], broken, *good[1:]]), 4)
            jobs = await self.claim_eventually(queue, 3, 30.0)
            _equal(sorted(job.id for job in jobs), [0, 1, 2])
            _equal(await queue.ack(jobs), 3)
            (dead,) = await queue.dead_letters()
            _equal(dead.job_id, "bad")
            _expect(
                "cannot be decoded" in dead.error, f"the decode error in the dead letter, got {dead.error!r}"
            )

        self.claiming(body)

    def test_a_job_that_kills_its_consumer_is_dead_lettered_after_its_attempts(self) -> None:
        self.require("dead_letters")

        async def body(open_queue: Opener) -> None:
            producer = open_queue()
            await self._enqueue(producer, [Job("killer", None)])
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
        self.require("lease_tokens", "lease_expiry")

        async def body(open_queue: Opener) -> None:
            slow, fast = open_queue(), open_queue()
            await self._enqueue(slow, [Job("t", None)])
            (stale,) = await self.claim_eventually(slow, 1, self.lease)
            (fresh,) = await self.claim_eventually(fast, 1, 30.0)  # after the first lease ran out
            _expect(stale.receipt.token != fresh.receipt.token, "stale.receipt.token != fresh.receipt.token")
            _equal(await slow.ack([stale]), 0)
            _equal(await slow.retry([stale], [0.0]), 0)
            _equal(await slow.dead_letter([(stale, "late")]), 0)
            _equal(await slow.extend([stale], 30.0), 0)
            _expect((await fast.stats()).in_flight in (1, None), "in_flight == 1 (or unknown)")
            _equal(await fast.ack([fresh]), 1)

        self.claiming(body)

    def test_extending_a_lease_keeps_the_job(self) -> None:
        self.require("lease_expiry")

        async def body(open_queue: Opener) -> None:
            holder, other = open_queue(), open_queue()
            await self._enqueue(holder, [Job("x", None)])
            (job,) = await self.claim_eventually(holder, 1, self.lease)
            for _ in range(3):  # renewed well inside each lease, 1.8 leases in all
                await asyncio.sleep(self.lease * 0.6)
                _equal(await holder.extend([job], self.lease), 1)
            _equal(await other.claim(1, 30.0), [])
            _equal(await holder.ack([job]), 1)

        self.claiming(body)

    def test_jobs_survive_closing_and_reopening(self) -> None:
        self.require("durable")

        async def body(open_queue: Opener) -> None:
            first = open_queue()
            await self._enqueue(first, [Job("kept", {"a": [1, 2]})])
            await first.close()
            await first.close()  # idempotent
            (job,) = await self.claim_eventually(open_queue(), 1, 30.0)
            _equal((job.id, job.data), ("kept", {"a": [1, 2]}))

        self.claiming(body)

    def test_a_closed_queue_says_so(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await queue.stats()
            await queue.close()
            with pytest.raises(MicroBatchingError, match="is closed"):
                await queue.stats()

        self.claiming(body)

    def test_stats_report_the_oldest_age(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            _equal((await queue.stats()).oldest_age, None)
            await self._enqueue(queue, [Job(1, 1)])
            await asyncio.sleep(0.05)
            stats = await queue.stats()
            _expect(stats.pending in (1, None), "pending == 1 (or unknown)")
            _expect(stats.oldest_age is None or stats.oldest_age >= 0.04, "oldest_age >= 0.05 s (or unknown)")

        self.claiming(body)

    def test_an_enqueue_repeated_after_a_dropped_connection_stores_each_job_once(self) -> None:
        self.require("idempotent_enqueue")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            messages = [queue.encode(Job(i, i)) for i in range(20)]
            _equal(await queue.enqueue(messages), 20)
            _equal(await queue.enqueue(messages[5:]), 0)  # the same keys again: nothing new
            jobs = await self.claim_eventually(queue, 20, 30.0)
            _equal(sorted(job.id for job in jobs), list(range(20)))
            _equal(await queue.claim(20, 30.0, wait=0.2), [])

        self.claiming(body)

    def test_put_stores_a_job_once_per_id_while_it_is_unfinished(self) -> None:
        self.require("idempotent_enqueue")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            _equal(await queue.aput({"to": "a@example.com"}, id="welcome-1"), "welcome-1")
            _equal(await queue.aput({"to": "a@example.com"}, id="welcome-1"), "welcome-1")  # not a second job
            generated = await queue.aput_many(["x", "y"])
            _equal(len(set(generated)), 2)
            jobs = await self.claim_eventually(queue, 3, 30.0)
            _equal(sorted(str(job.id) for job in jobs), sorted(["welcome-1", *map(str, generated)]))
            _equal(await queue.claim(5, 30.0, wait=0.2), [])
            _equal(await queue.ack(jobs), 3)
            await queue.aput("again", id="welcome-1")  # finished: the id may be used again
            (again,) = await self.claim_eventually(queue, 1, 30.0)
            _equal((again.id, again.data), ("welcome-1", "again"))

        self.claiming(body)

    def test_put_from_synchronous_code(self) -> None:
        self.require()
        queue = self.make_queue()
        try:
            ids = [queue.put(i) for i in range(3)]
            ids += queue.put_many([3, 4])
            errors: list[BaseException] = []

            def put_from_a_thread() -> None:
                try:
                    ids.append(queue.put(5))
                except BaseException as exc:  # reported below
                    errors.append(exc)

            thread = threading.Thread(target=put_from_a_thread)
            thread.start()
            thread.join(self.patience)
            _equal(errors, [])
        finally:
            queue.close_blocking()

        async def body(open_queue: Opener) -> None:
            jobs = await self.claim_eventually(open_queue(), 6, 30.0)
            _equal(sorted(job.data for job in jobs), list(range(6)))
            _equal(sorted(map(str, ids)), sorted(str(job.id) for job in jobs))

        self.claiming(body)

    def test_put_with_a_delay_holds_the_job_back(self) -> None:
        self.require("delayed_enqueue")

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            put_at = time.monotonic()
            await queue.aput("later", delay=0.5)
            _equal(await queue.claim(1, 30.0), [])
            (job,) = await self.claim_eventually(queue, 1, 30.0)
            _expect(time.monotonic() - put_at >= 0.5 - 0.02, "the delay (0.5 s) to be waited out")
            _equal(job.data, "later")

        self.claiming(body)

    def test_the_queue_survives_a_dropped_connection(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            queue = open_queue()
            await self._enqueue(queue, [Job(i, i) for i in range(10)])
            await self.break_connection(queue)
            await self._reconnected(queue, [Job(i, i) for i in range(10, 20)])
            jobs = await self.claim_eventually(queue, 20, 30.0)
            _equal(sorted(job.id for job in jobs), list(range(20)))
            _equal(await queue.ack(jobs), 20)

        self.claiming(body)

    async def _reconnected(self, queue: ClaimQueue, jobs: list[Job[Any]]) -> None:
        """Enqueue ``jobs`` once the queue has reconnected (the first call may see the drop)."""
        messages = [queue.encode(job) for job in jobs]
        deadline = time.monotonic() + self.patience
        while True:
            try:
                await queue.enqueue(messages)
                return
            except MicroBatchingError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def test_a_settle_across_a_dropped_connection_is_counted_once(self) -> None:
        self.require()

        async def body(open_queue: Opener) -> None:
            queue, other = open_queue(), open_queue()
            await self._enqueue(queue, [Job(i, i) for i in range(5)])
            jobs = await self.claim_eventually(queue, 5, self.lease)
            await self.break_connection(queue)
            acked = 0
            deadline = time.monotonic() + self.patience
            while True:
                try:
                    acked = await queue.ack(jobs)
                    break
                except MicroBatchingError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            # Either the acknowledgement reached the jobs, or it was refused and they come back.
            _expect(acked in (0, 5), f"the acknowledgement to count all 5 jobs or none, got {acked}")
            back = await self.claim_eventually(other, 5, 30.0) if acked == 0 else []
            _equal(sorted(job.id for job in back), [] if acked else list(range(5)))
            _equal(await other.ack(back), len(back))
            _equal(await other.claim(5, 30.0, wait=0.3), [])

        self.claiming(body)


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


def _known(in_flight: int | None) -> int:
    """An in-flight count, an unknown one (a broker that cannot count held deliveries) as 0."""
    return 0 if in_flight is None else in_flight


def _expect(condition: object, what: str) -> None:
    # Explicit checks, not assert: the suite must not pass vacuously under python -O.
    if not condition:
        pytest.fail(f"expected {what}")


def _equal(actual: object, expected: object) -> None:
    if actual != expected:
        pytest.fail(f"expected {expected!r}, got {actual!r}")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)
