"""Stateful tests: random runs of submits, cancels and resubmits, then a shutdown in a random mode.

Whatever the sequence, at the end every handle is settled exactly once, the statistics
add up, no batch broke its size or weight limit, no job ran after its submitter cancelled
it in time, none ran twice in one batch, and none ran more often than it was submitted
or retried.  Each batcher has two machines: one ends with a shutdown in a random mode
(plain, a small timeout, cancel=True), the other always with a plain, graceful one.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

from conftest import VirtualClockLoop
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, rule

from microbatching import AsyncMicroBatching, Job, JobCancelledError, JobResult, MicroBatching, RetryPolicy

#: Job kinds: most succeed; "slot" gets an Exception in its slot; "raise" makes its whole batch raise.
KINDS = st.sampled_from(["ok", "ok", "ok", "slot", "raise"])
WEIGHTS = st.integers(min_value=1, max_value=5)
MAX_WEIGHT = 6
MODES = st.sampled_from(["cancel", "timeout", "plain"])
#: Jobs submitted right at the start, so that most runs have some to cancel and resubmit.
FIRST_JOBS = st.lists(st.tuples(KINDS, WEIGHTS), min_size=1, max_size=4)
#: A cancel that returned True this long before the processor got the job was surely before its
#: batch started (the engine checks for cancels as it starts a batch, microseconds earlier).
SYNC_MARGIN = 0.25
SYNC_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # No "explain" phase: it traces every line, which is slow before Python 3.12.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
#: The virtual-clock machine costs a few milliseconds a run: it can afford many more.
ASYNC_SETTINGS = settings(SYNC_SETTINGS, max_examples=200)

_ids = itertools.count(1)

HANDLES = Bundle("handles")
CANCELLED = Bundle("cancelled")


def starting(modes: st.SearchStrategy[str]) -> Any:
    """The rule that starts a machine: its options, its shutdown mode and a few first jobs."""
    return initialize(
        target=HANDLES,
        batch_size=st.integers(min_value=1, max_value=4),
        interval=st.sampled_from([0.0, 0.002, 9.0]),
        concurrency=st.integers(min_value=1, max_value=2),
        weighted=st.booleans(),
        mode=modes,
        first_jobs=FIRST_JOBS,
    )


class _Outcomes:
    """What both machines record and check: batches seen, handles and how often each settled."""

    batch_size: int
    weighted: bool

    def setup_records(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[tuple[Any, int, int]]] = []  # (job id, attempts, weight) per job
        self.late: list[str] = []  # jobs the processor got after their submitter cancelled them
        self.current: dict[Job[Any], Any] = {}  # each job object's latest handle (None while submitting)
        self.cancelled_at: dict[Any, float] = {}
        self.resubmitted: set[Any] = set()
        self.handles: list[Any] = []
        self.job_of: dict[Any, Job[Any]] = {}
        self.settles: dict[int, int] = {}
        self.submits: dict[Any, int] = {}  # submissions per job id (a resubmit is one more)
        self.retries: dict[Any, int] = {}  # job_retrying events per job id

    def record_batch(self, jobs: list[Job[Any]], cancelled_too_early: Any) -> list[Any]:
        with self.lock:
            self.batches.append([(job.id, job.attempts, job.data[1]) for job in jobs])
            for job in jobs:
                handle = self.current.get(job)
                if handle is not None and cancelled_too_early(handle):
                    self.late.append(f"job {job.id!r} (attempt {job.attempts})")
        if any(job.data[0] == "raise" for job in jobs):
            raise ConnectionError("the whole batch fails")
        return [ValueError("this slot fails") if job.data[0] == "slot" else job.data for job in jobs]

    def options(self, batch_size: int, interval: float, concurrency: int, weighted: bool) -> dict[str, Any]:
        self.batch_size, self.weighted = batch_size, weighted
        weights: dict[str, Any] = (
            {"max_batch_weight": MAX_WEIGHT, "weight": lambda job: job.data[1]} if weighted else {}
        )
        return {
            "batch_size": batch_size,
            "batch_interval": interval,
            "max_concurrent_batches": concurrency,
            "retry": RetryPolicy(max_attempts=2, base_delay=0.001, jitter=0),
            **weights,
        }

    def before_submit(self, job: Job[Any]) -> Any:
        """Until the submit returns, ``job`` stands for no handle (not its old, cancelled one)."""
        with self.lock:
            previous = self.current.get(job)
            self.current[job] = None
        return previous

    def refused(self, job: Job[Any], previous: Any) -> None:
        with self.lock:
            self.current[job] = previous

    def retrying(self, job: Job[Any], error: BaseException, delay: float) -> None:
        with self.lock:
            self.retries[job.id] = self.retries.get(job.id, 0) + 1

    def track(self, job: Job[Any], handle: Any) -> None:
        with self.lock:
            self.submits[job.id] = self.submits.get(job.id, 0) + 1
            self.current[job] = handle
            self.job_of[handle] = job
            self.handles.append(handle)
            self.settles[id(handle)] = 0
        handle.add_done_callback(self._settled)

    def note_cancel(self, handle: Any) -> bool:
        """Cancel ``handle``; whether this call cancelled it (and when, for the checks)."""
        if not handle.cancel():
            return False
        with self.lock:
            if handle in self.cancelled_at:
                return False
            self.cancelled_at[handle] = time.monotonic()
        return True

    def resubmittable(self, handle: Any) -> bool:
        """Each cancel that took effect may be followed by one resubmission, no more: two
        resubmissions would be two live submissions of the job, free to share a batch."""
        with self.lock:
            if handle not in self.cancelled_at or handle in self.resubmitted:
                return False
            self.resubmitted.add(handle)
        return True

    def _settled(self, handle: Any) -> None:
        with self.lock:
            self.settles[id(handle)] += 1

    def check_batches(self) -> None:
        """What the processor saw so far: limits kept, no job run after its cancel, none twice."""
        with self.lock:
            batches, late = [list(batch) for batch in self.batches], list(self.late)
        for batch in batches:
            assert 1 <= len(batch) <= self.batch_size, (
                f"a batch of {len(batch)} > batch_size={self.batch_size}"
            )
            if self.weighted and len(batch) > 1:
                weight = sum(w for _, _, w in batch)
                assert weight <= MAX_WEIGHT, f"a batch weighing {weight} > max_batch_weight={MAX_WEIGHT}"
        assert not late, f"processed after their submitter cancelled them: {late}"
        runs: dict[Any, int] = {}
        for batch in batches:
            ids = [job_id for job_id, _, _ in batch]
            twice = sorted({job_id for job_id in ids if ids.count(job_id) > 1})
            assert not twice, (
                f"jobs {twice} were processed twice in one batch; batches (id, attempt, weight): {batches}"
            )
            for job_id in ids:
                runs[job_id] = runs.get(job_id, 0) + 1
        with self.lock:
            allowed = {job_id: self.submits.get(job_id, 0) + self.retries.get(job_id, 0) for job_id in runs}
        extra = {job_id: count for job_id, count in runs.items() if count > allowed[job_id]}
        assert not extra, (
            f"jobs processed more often than they were submitted or retried: {extra} (allowed {allowed})"
        )

    def check_outcomes(self, mode: str, stats: Any) -> None:
        """After the shutdown: every handle settled once, and the statistics add up."""
        unsettled = [handle for handle in self.handles if not handle.done()]
        assert not unsettled, (
            f"shutdown({mode}) returned with {len(unsettled)} of {len(self.handles)} handles unsettled"
        )
        twice = {key: count for key, count in self.settles.items() if count != 1}
        assert not twice, f"handles settled more or less than once: {sorted(twice.values())}"
        assert stats.pending == 0, stats
        assert stats.submitted == stats.completed + stats.failed + stats.cancelled, stats
        assert stats.submitted == len(self.handles), (stats.submitted, len(self.handles))
        if mode == "plain":  # a graceful shutdown abandons nothing its submitter did not cancel
            abandoned = [
                handle
                for handle in self.handles
                if handle not in self.cancelled_at
                and isinstance(handle.exception(timeout=0) if isinstance(handle, JobResult)
                               else handle.exception(), JobCancelledError)
            ]  # fmt: skip
            assert not abandoned, f"a plain shutdown() abandoned {len(abandoned)} jobs"
        self.check_batches()


class SyncOutcomes(_Outcomes, RuleBasedStateMachine):
    """``MicroBatching`` driven from the test thread and from other threads."""

    def __init__(self) -> None:
        super().__init__()
        self.setup_records()
        self.mb: MicroBatching | None = None

    @starting(MODES)
    def start(self, **options: Any) -> Any:
        return self.begin(**options)

    def begin(
        self,
        batch_size: int,
        interval: float,
        concurrency: int,
        weighted: bool,
        mode: str,
        first_jobs: list[tuple[str, int]],
    ) -> Any:
        self.mode = mode
        options = self.options(batch_size, interval, concurrency, weighted)
        self.mb = MicroBatching(None, self.process, **options)
        self.mb.on("job_retrying", self.retrying)
        return multiple(*(self.submit(kind, weight) for kind, weight in first_jobs))

    def process(self, jobs: list[Job[Any]]) -> list[Any]:
        now = time.monotonic()

        def cancelled_too_early(handle: Any) -> bool:
            at = self.cancelled_at.get(handle)
            return at is not None and now - at > SYNC_MARGIN

        return self.record_batch(jobs, cancelled_too_early)

    def _submit(self, job: Job[Any]) -> Any:
        assert self.mb is not None
        previous = self.before_submit(job)
        try:
            handle = self.mb.submit_job(job)
        except BaseException:
            self.refused(job, previous)
            raise
        self.track(job, handle)
        return handle

    @rule(target=HANDLES, kind=KINDS, weight=WEIGHTS)
    def submit(self, kind: str, weight: int) -> Any:
        return self._submit(Job(next(_ids), (kind, weight)))

    @rule(target=HANDLES, kind=KINDS, weight=WEIGHTS)
    def submit_from_another_thread(self, kind: str, weight: int) -> Any:
        job: Job[Any] = Job(next(_ids), (kind, weight))
        got: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: got.update(handle=self._submit(job)))
        thread.start()
        thread.join(10)
        assert "handle" in got, "submit_job from another thread did not return"
        return got["handle"]

    # Bundles must not depend on timing (Hypothesis replays runs): every cancel attempt
    # goes into ``cancelled``, every resubmit attempt gives back a handle.

    @rule(target=CANCELLED, handle=HANDLES)
    def cancel(self, handle: Any) -> Any:
        self.note_cancel(handle)
        return handle

    @rule(target=HANDLES, handle=consumes(CANCELLED))
    def resubmit_cancelled_job(self, handle: Any) -> Any:
        if not self.resubmittable(handle):
            return handle
        try:
            return self._submit(self.job_of[handle])  # the same Job object again
        except ValueError:  # refused: a later submission of it is still being worked on
            return handle

    # No @invariant here: what the processor has seen at a given step depends on thread
    # timing, and a check failing at different steps on replay confuses Hypothesis.  The
    # batches are checked once, at the end.

    def teardown(self) -> None:
        mb = self.mb
        if mb is None:
            return
        finished: dict[str, Any] = {}

        def close() -> None:
            try:
                if self.mode == "plain":
                    mb.shutdown()
                elif self.mode == "timeout":
                    mb.shutdown(timeout=0.02)
                else:
                    mb.shutdown(cancel=True)
                finished["returned"] = True
            except BaseException as exc:
                finished["error"] = exc

        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), f"shutdown({self.mode}) did not return within 10 s"
        assert "error" not in finished, finished
        self.check_outcomes(self.mode, mb.stats())


class AsyncOutcomes(_Outcomes, RuleBasedStateMachine):
    """``AsyncMicroBatching`` on a loop of its own, run only while a rule runs.

    The loop keeps virtual time (it jumps to the next timer when idle), so a run is the same
    every time Hypothesis replays it: no timing races, and timeouts cost no real time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setup_records()
        self.loop = VirtualClockLoop()
        self.mb: AsyncMicroBatching | None = None

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, 10))

    @starting(MODES)
    def start(self, **options: Any) -> Any:
        return self.begin(**options)

    def begin(
        self,
        batch_size: int,
        interval: float,
        concurrency: int,
        weighted: bool,
        mode: str,
        first_jobs: list[tuple[str, int]],
    ) -> Any:
        self.mode = mode
        self.mb = AsyncMicroBatching(
            None, self.process, **self.options(batch_size, interval, concurrency, weighted)
        )
        self.mb.on("job_retrying", self.retrying)

        async def begin() -> list[Any]:
            assert self.mb is not None
            self.mb.start()
            return [await self._submit(Job(next(_ids), data)) for data in first_jobs]

        return multiple(*self.run(begin()))

    async def process(self, jobs: list[Job[Any]]) -> list[Any]:
        # The loop is single-threaded: a job whose future is cancelled here was cancelled
        # before its batch started.
        results = self.record_batch(jobs, lambda future: future.cancelled())
        await asyncio.sleep(0)
        return results

    async def _submit(self, job: Job[Any], wait_for_room: bool = False) -> Any:
        assert self.mb is not None
        previous = self.before_submit(job)
        try:
            future = await self.mb.submit_job(job) if wait_for_room else self.mb.submit_job_nowait(job)
        except BaseException:
            self.refused(job, previous)
            raise
        self.track(job, future)
        await asyncio.sleep(0)
        return future

    @rule(target=HANDLES, kind=KINDS, weight=WEIGHTS)
    def submit(self, kind: str, weight: int) -> Any:
        return self.run(self._submit(Job(next(_ids), (kind, weight))))

    @rule(target=HANDLES, kind=KINDS, weight=WEIGHTS)
    def submit_from_another_task(self, kind: str, weight: int) -> Any:
        async def from_a_task() -> Any:
            return await asyncio.ensure_future(self._submit(Job(next(_ids), (kind, weight)), True))

        return self.run(from_a_task())

    @rule(pause=st.sampled_from([0.0, 0.001, 0.005]))
    def let_time_pass(self, pause: float) -> None:
        self.run(asyncio.sleep(pause))

    @rule(target=CANCELLED, handle=HANDLES)
    def cancel(self, handle: Any) -> Any:
        self.note_cancel(handle)
        return handle

    @rule(target=HANDLES, handle=consumes(CANCELLED))
    def resubmit_cancelled_job(self, handle: Any) -> Any:
        if not self.resubmittable(handle):
            return handle
        try:
            return self.run(self._submit(self.job_of[handle]))  # the same Job object again
        except ValueError:  # refused: a later submission of it is still being worked on
            return handle

    @invariant()
    def batches_so_far_are_sound(self) -> None:
        self.check_batches()

    def teardown(self) -> None:
        try:
            mb = self.mb
            if mb is None:
                return
            if self.mode == "plain":
                self.run(mb.shutdown())
            elif self.mode == "timeout":
                self.run(mb.shutdown(timeout=0.02))
            else:
                self.run(mb.shutdown(cancel=True))
            self.run(asyncio.sleep(0.001))  # done callbacks run on the loop
            for future in self.handles:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" noise
            self.check_outcomes(self.mode, mb.stats())
        finally:
            for future in self.handles:
                if not future.done():
                    future.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()


class SyncOutcomesGracefulShutdown(SyncOutcomes):
    """The same runs, always ended by a plain ``shutdown()``: every job not cancelled gets its outcome."""

    @starting(st.just("plain"))
    def start(self, **options: Any) -> Any:
        return self.begin(**options)


class AsyncOutcomesGracefulShutdown(AsyncOutcomes):
    """The same runs, always ended by a plain ``await shutdown()``."""

    @starting(st.just("plain"))
    def start(self, **options: Any) -> Any:
        return self.begin(**options)


TestSyncOutcomes = SyncOutcomes.TestCase
TestAsyncOutcomes = AsyncOutcomes.TestCase
TestSyncOutcomesGracefulShutdown = SyncOutcomesGracefulShutdown.TestCase
TestAsyncOutcomesGracefulShutdown = AsyncOutcomesGracefulShutdown.TestCase
TestSyncOutcomes.settings = TestSyncOutcomesGracefulShutdown.settings = SYNC_SETTINGS
TestAsyncOutcomes.settings = TestAsyncOutcomesGracefulShutdown.settings = ASYNC_SETTINGS
