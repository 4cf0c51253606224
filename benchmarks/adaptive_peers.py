"""Two peers' adaptive rules, re-implemented from their published descriptions for the same harness.

- **CORK** (BentoML's dispatcher): every 1 ms tick it fits ``duration = a*n + b`` by least
  squares over the last 50 batches (refit at most every 5 s after two early refits) and
  keeps the mean wait of each batch's newest job.  With ``n`` jobs waiting, the oldest
  ``w0`` and the newest ``wn`` old: it sheds the oldest job (an HTTP 503 there, a
  ``Shed`` error here) when ``n > 1`` and ``w0 + a*n + b`` reaches the latency target,
  or a lone job that waited the whole target; while the processor is busy it waits a
  tick; while ``n < max_batch_size`` and ``n * (wn + tick + a) <= 0.95 * mean wait`` it
  waits a tick for company; otherwise it takes up to ``max_batch_size`` jobs, newest first.
  Its warm-up phase (batches of 1, 2, 3 before the first fit) is left out: the fit starts
  from its published initial guesses and refits after the first batches.
- **AIMD** (Clipper's batch-size controller): batches leave as soon as the processor is
  free (natural batching); after each batch the cap grows by one job while the batch ran
  within the latency target, and shrinks by 10% when it did not.  Built on the library's
  fixed policy (``batch_interval=0``) and its ``batch_size`` setter.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from adaptive_sim import Config, Device

from microbatching import AsyncMicroBatching, Batch

__all__ = ["Shed", "aimd", "cork"]


class Shed(Exception):
    """A job the CORK rule dropped because it could no longer meet the latency target."""


_TICK = 0.001
_KEPT = 50
_SKIPPED = 2
_REFIT_EVERY = 5.0
_DECAY = 0.95


class _Fit:
    """``duration = a*n + b`` over the last batches, and the mean wait of their newest job."""

    def __init__(self, target: float) -> None:
        self.a = min(2.0, target * 2.0 / 30)
        self.b = min(1.0, target / 30)
        self.wait = 0.0
        self._samples: collections.deque[tuple[int, float, float]] = collections.deque(maxlen=_KEPT)
        self._seen = 0
        self._free_refits = 2
        self._last_refit = float("-inf")

    def log(self, n: int, wait: float, duration: float, now: float) -> None:
        self._seen += 1
        if self._seen <= _SKIPPED:
            return
        self._samples.append((n, duration, wait))
        if self._free_refits or now - self._last_refit >= _REFIT_EVERY:
            self._free_refits = max(0, self._free_refits - 1)
            self._last_refit = now
            self._refit()

    def _refit(self) -> None:
        count = len(self._samples)
        sizes = [n for n, _, _ in self._samples]
        durations = [d for _, d, _ in self._samples]
        mean_n, mean_d = sum(sizes) / count, sum(durations) / count
        spread = sum((n - mean_n) ** 2 for n in sizes)
        slope = (
            sum((n - mean_n) * (d - mean_d) for n, d in zip(sizes, durations, strict=True)) / spread
            if spread
            else 0.0
        )
        self.a = max(0.000001, slope)
        self.b = max(0.0, mean_d - slope * mean_n)
        self.wait = max(0.0, sum(w for _, _, w in self._samples) / count)


class CorkBatcher:
    """The CORK rule as a batcher: ``submit_nowait(item)`` gives a future; one device slot."""

    def __init__(self, device: Device, target: float, max_batch_size: int) -> None:
        self._device = device
        self._target = target
        self._max = max_batch_size
        self._fit = _Fit(target)
        self._queue: collections.deque[tuple[float, Any, asyncio.Future[Any]]] = collections.deque()
        self._busy = False
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    def submit_nowait(self, item: Any) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._queue.append((self._loop.time(), item, future))
        if self._task is None:
            self._task = self._loop.create_task(self._control())
        self._wake.set()
        return future

    def probe(self) -> tuple[int, int | None]:
        return len(self._queue) + self._in_flight, None

    async def _control(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._step():
                await asyncio.sleep(_TICK)

    def _step(self) -> bool:
        """One decision; whether to wait a tick before the next."""
        now, fit, queue = self._loop.time(), self._fit, self._queue
        n = len(queue)
        oldest, newest = now - queue[0][0], now - queue[-1][0]
        if n > 1 and oldest + fit.a * n + fit.b >= self._target:
            self._shed()
            return False
        if self._busy:
            if n == 1 and oldest >= self._target:
                self._shed()
                return False
            return True
        if n < self._max and n * (newest + _TICK + fit.a) <= fit.wait * _DECAY:
            return True
        taken = [queue.pop() for _ in range(min(self._max, n))]  # newest first, as published
        self._busy = True
        self._loop.create_task(self._call(taken, now))
        return False

    def _shed(self) -> None:
        _, _, future = self._queue.popleft()
        future.set_exception(Shed("shed: the latency target cannot be met"))

    async def _call(self, taken: list[tuple[float, Any, asyncio.Future[Any]]], started: float) -> None:
        self._in_flight = len(taken)
        try:
            results = await self._device.process([item for _, item, _ in taken])
        finally:
            self._busy = False
            self._in_flight = 0
        for (_, _, future), result in zip(taken, results, strict=True):
            if not future.done():
                future.set_result(result)
        now = self._loop.time()
        self._fit.log(len(taken), started - taken[0][0], now - started, now)

    async def shutdown(self, timeout: float | None = None, *, cancel: bool = False) -> None:
        if self._task is not None:
            self._task.cancel()
        while self._queue:
            self._queue.popleft()[2].cancel()


def cork(target: float, max_batch_size: int) -> Config:
    """BentoML's CORK rule with this latency target and ``max_batch_size``."""
    return Config("CORK (BentoML)", lambda device: CorkBatcher(device, target, max_batch_size))


def aimd(target: float, max_batch_size: int) -> Config:
    """Clipper's AIMD cap over natural batching, on the library's fixed policy."""

    def make(device: Device) -> AsyncMicroBatching:
        mb = AsyncMicroBatching(
            None, device.process, takes="items", batch_size=1, batch_interval=0.0, retry=None
        )

        def adjust(batch: Batch, results: Any) -> None:
            ran = asyncio.get_running_loop().time() - (batch.started_at or 0.0)
            grown = mb.batch_size + 1 if ran <= target else int(mb.batch_size * 0.9)
            mb.batch_size = max(1, min(max_batch_size, grown))

        mb.on("batch_completed", adjust)
        return mb

    return Config("AIMD (Clipper)", make)
