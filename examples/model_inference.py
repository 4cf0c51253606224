"""Batching model inference behind the ``@microbatching.batch`` decorator.

A model is much faster on a batch than on the same items one by one: one matrix product
instead of many.  Here a small two-layer network in numpy stands in for the model.
Request handlers (asyncio tasks) call ``predict(features)`` for one item each; the
decorator gathers concurrent calls into batches of up to 64, runs one forward pass per
batch and hands each caller its own prediction.  The output compares the time against
calling the model item by item.

Needs numpy: ``python -m pip install '.[examples]'``.

    python examples/model_inference.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

# One BLAS thread: a serving process gets its parallelism from batching, and BLAS threads
# fighting over busy cores make a batched matrix product slower, not faster.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import microbatching  # noqa: E402

rng = np.random.default_rng(0)
W1 = rng.standard_normal((256, 512)).astype(np.float32)
W2 = rng.standard_normal((512, 10)).astype(np.float32)
forward_passes = 0


def model(x: np.ndarray) -> np.ndarray:
    """The stand-in model: (n, 256) features -> (n, 10) class probabilities."""
    global forward_passes
    forward_passes += 1
    hidden = np.maximum(x @ W1, 0.0)
    logits = hidden @ W2
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


@microbatching.batch(batch_size=64, batch_interval=0.002)
async def predict(batch: list[np.ndarray]) -> list[int]:
    """One forward pass for the whole batch; one predicted class per item."""
    probabilities = model(np.stack(batch))
    return [int(k) for k in probabilities.argmax(axis=1)]


async def handle_request(features: np.ndarray) -> int:
    # ... parse the request, then:
    return await predict(features)


async def main(requests: int) -> None:
    inputs = rng.standard_normal((requests, 256)).astype(np.float32)

    start = time.perf_counter()
    one_by_one = [int(model(x[None, :]).argmax()) for x in inputs]
    unbatched = time.perf_counter() - start

    global forward_passes
    forward_passes = 0
    start = time.perf_counter()
    batched = await asyncio.gather(*(handle_request(x) for x in inputs))
    elapsed = time.perf_counter() - start

    if list(batched) != one_by_one:
        raise SystemExit("batched predictions differ from one-by-one predictions")
    per_pass = requests / forward_passes
    print(f"{requests} predictions in {forward_passes} forward passes ({per_pass:.0f} per pass)")
    print(f"batched: {elapsed * 1e3:.0f} ms; one by one: {unbatched * 1e3:.0f} ms; same predictions")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (for the tests)")
    args = parser.parse_args()
    asyncio.run(main(200 if args.quick else 5_000))
