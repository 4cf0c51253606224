"""Batching model inference behind the ``@microbatching.batch`` decorator.

Serving a model on an accelerator costs a fixed amount per forward pass — copying inputs
to the device, launching its kernels, copying results back — whatever the number of items
in the pass, and the device runs one pass at a time.  One request per pass pays that cost
for every request; a batch pays it once for all its items.

Here ``Accelerator`` stands in for the device: a numpy two-layer network (the math, which
costs per item) behind a lock (one pass at a time) and a 1 ms wait per pass (the fixed
cost).  Request handlers (asyncio tasks) call ``predict(features)`` for one item each; the
decorator gathers concurrent calls into batches of up to 64, runs one forward pass per
batch and hands each caller its own prediction.  The same concurrent requests then run
again with each handler calling the device itself, one pass per request, and the program
prints both, and the speedup.

Needs numpy: ``python -m pip install '.[examples]'``.

    python examples/model_inference.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

# One BLAS thread: a serving process gets its parallelism from batching, and BLAS threads
# fighting over busy cores make a batched matrix product slower, not faster.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import microbatching  # noqa: E402

rng = np.random.default_rng(0)
W1 = rng.standard_normal((256, 512)).astype(np.float32)
W2 = rng.standard_normal((512, 10)).astype(np.float32)


def model(x: np.ndarray) -> np.ndarray:
    """The network: (n, 256) features -> (n, 10) class probabilities."""
    hidden = np.maximum(x @ W1, 0.0)
    logits = hidden @ W2
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


class Accelerator:
    """A stand-in for a GPU: one forward pass at a time, each with a fixed cost."""

    #: Seconds per pass on top of the math: transfers in and out, kernel launches.
    PER_PASS = 0.001

    def __init__(self) -> None:
        self._busy = asyncio.Lock()
        self.passes = 0

    async def forward(self, x: np.ndarray) -> np.ndarray:
        async with self._busy:
            self.passes += 1
            await asyncio.sleep(self.PER_PASS)
            return model(x)


device: Accelerator


@microbatching.batch(batch_size=64, batch_interval=0.002)
async def predict(batch: list[np.ndarray]) -> list[int]:
    """One forward pass for the whole batch; one predicted class per item."""
    probabilities = await device.forward(np.stack(batch))
    return [int(k) for k in probabilities.argmax(axis=1)]


async def handle_request(features: np.ndarray) -> int:
    # ... parse the request, then:
    return await predict(features)


async def handle_request_unbatched(features: np.ndarray) -> int:
    probabilities = await device.forward(features[None, :])
    return int(probabilities.argmax())


async def serve(
    handler: Callable[[np.ndarray], Awaitable[int]], inputs: np.ndarray
) -> tuple[list[int], float, int]:
    """Every request at once, as concurrent handlers: (predictions, seconds, forward passes)."""
    global device
    device = Accelerator()
    start = time.perf_counter()
    predictions = await asyncio.gather(*(handler(x) for x in inputs))
    return list(predictions), time.perf_counter() - start, device.passes


async def main(requests: int) -> None:
    inputs = rng.standard_normal((requests, 256)).astype(np.float32)
    one_by_one, unbatched, unbatched_passes = await serve(handle_request_unbatched, inputs)
    batched, elapsed, passes = await serve(handle_request, inputs)
    if batched != one_by_one:
        raise SystemExit("batched predictions differ from one-by-one predictions")

    print(f"{requests} concurrent requests, {Accelerator.PER_PASS * 1e3:g} ms fixed cost per forward pass")
    print(
        f"one by one: {unbatched_passes:>5} forward passes, {unbatched * 1e3:7.1f} ms, "
        f"{requests / unbatched:9,.0f} predictions/s"
    )
    print(
        f"batched:    {passes:>5} forward passes, {elapsed * 1e3:7.1f} ms, "
        f"{requests / elapsed:9,.0f} predictions/s ({requests / passes:.0f} per pass)"
    )
    print(f"speedup: {unbatched / elapsed:.1f}x; same predictions")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (for the tests)")
    args = parser.parse_args()
    asyncio.run(main(200 if args.quick else 2_000))
