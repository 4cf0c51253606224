"""An asyncio service batching its calls to a bulk HTTP API, with ``httpx.AsyncClient``.

The remote API prices many SKUs per request (``POST /prices`` with a JSON list) and
charges a round trip per request.  The service's request handlers each need one price;
``AsyncMicroBatching`` gathers their concurrent lookups into one POST per batch, sent with
a shared ``httpx.AsyncClient`` (one connection pool for the process).  An unknown SKU
fails that lookup alone; a 503 for a whole request is retried with backoff.

The API here is a local stand-in (stdlib ``http.server`` on 127.0.0.1, a free port) that
this program starts itself, so it runs offline: 20 ms per request; the second request,
and about one in twenty after it, are answered 503.  ``examples/fastapi_app.py`` serves
the same lookups from a FastAPI app.

Needs httpx: ``python -m pip install '.[examples]'``.

    python examples/async_http_client.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from microbatching import AsyncMicroBatching, Job, JobFailedError, RetryPolicy

# -- the stand-in for the remote API -----------------------------------------------------------


class PriceAPI(BaseHTTPRequestHandler):
    """POST /prices with a JSON list of SKUs -> a JSON list of prices (or errors), same order."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections
    disable_nagle_algorithm = True  # headers and body leave at once, not 40 ms apart
    requests_seen = 0
    largest_request = 0
    lock = threading.Lock()
    chance = random.Random(7)

    def do_POST(self) -> None:
        skus = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            cls = type(self)
            cls.requests_seen += 1
            cls.largest_request = max(cls.largest_request, len(skus))
            # a transient outage: the second request, then about one request in twenty
            unlucky = cls.requests_seen == 2 or cls.chance.random() < 0.05
        time.sleep(0.02)  # the round trip the batching pays once per batch, not per SKU
        if unlucky:
            self._reply(503, {"error": "busy, try again"})
            return
        prices = [{"error": "unknown SKU"} if sku.startswith("X") else {"price": price(sku)} for sku in skus]
        self._reply(200, prices)

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep the output clean
        pass


def price(sku: str) -> float:
    """What the stand-in charges for ``sku`` (so callers can check their answers)."""
    return round(sum(map(ord, sku)) / 10, 2)


@contextmanager
def stand_in_api() -> Iterator[str]:
    """Serve the stand-in API on a free local port, in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), PriceAPI)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="price-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- the client side: one POST per batch ----------------------------------------------------------


# --8<-- [start:client]
class TransientError(Exception):
    """The API asked us to try again later (the whole request)."""


class UnknownSKU(LookupError):
    """The API has no price for one SKU."""


class PriceLookup:
    """The batch processor: one ``POST /prices`` for the whole batch, one result per job."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def process_batch(self, jobs: list[Job[str]]) -> list[Any]:
        response = await self.client.post("/prices", json=[job.data for job in jobs])
        if response.status_code == 503:
            raise TransientError("503 from the price API")  # fails the batch: retried
        response.raise_for_status()
        # An error for one item fails that job alone.
        return [UnknownSKU(r["error"]) if "error" in r else r["price"] for r in response.json()]


#: How the service batches: up to 100 SKUs per request, a lookup waits at most 5 ms for
#: company, 4 requests in flight at once, room for 10,000 pending lookups, 503s retried.
BATCHING: dict[str, Any] = {
    "batch_size": 100,
    "batch_interval": 0.005,
    "max_concurrent_batches": 4,
    "max_pending": 10_000,
    "retry": RetryPolicy(max_attempts=5, base_delay=0.02, retry_on=(TransientError, httpx.TransportError)),
}


async def lookup(batcher: AsyncMicroBatching, sku: str) -> float:
    """One price, batched with every other lookup in flight; raises ``UnknownSKU``."""
    future = await batcher.submit_job(Job(data=sku))  # waits for room under max_pending
    try:
        return float(await future)
    except JobFailedError as exc:
        if isinstance(exc.cause, UnknownSKU):
            raise exc.cause from None
        raise


# --8<-- [end:client]


async def serve(
    api_url: str, requests: int, on_result: Callable[[str, float | None], None]
) -> AsyncMicroBatching:
    """Run ``requests`` concurrent handlers, each looking up one SKU; returns the batcher."""
    async with (
        httpx.AsyncClient(base_url=api_url, timeout=10) as client,
        AsyncMicroBatching(None, PriceLookup(client), **BATCHING) as batcher,
    ):
        # The batcher is closed first (leaving the block flushes and waits), then the client.

        async def handle_request(n: int) -> None:
            sku = f"X-{n}" if n % 50 == 7 else f"SKU-{n:05d}"
            try:
                on_result(sku, await lookup(batcher, sku))
            except UnknownSKU:
                on_result(sku, None)

        await asyncio.gather(*(handle_request(n) for n in range(requests)))
    return batcher


def main(requests: int) -> None:
    results: dict[str, float | None] = {}
    with stand_in_api() as url:
        start = time.perf_counter()
        batcher = asyncio.run(serve(url, requests, results.__setitem__))
        elapsed = time.perf_counter() - start
    stats = batcher.stats()
    unknown = [sku for sku, value in results.items() if value is None]
    if len(results) != requests or any(v != price(k) for k, v in results.items() if v is not None):
        raise SystemExit("wrong or missing prices")
    if any(not sku.startswith("X") for sku in unknown) or stats.failed != len(unknown):
        raise SystemExit("unexpected failures")
    print(
        f"{requests} lookups in {PriceAPI.requests_seen} HTTP requests ({elapsed * 1e3:.0f} ms): "
        f"{requests - len(unknown)} priced, {len(unknown)} unknown"
    )
    print(
        f"{stats.processor_errors} requests answered 503 ({stats.retried} lookups retried); "
        f"largest request {PriceAPI.largest_request} SKUs, batch size p50 {stats.batch_size.p50:.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (for the tests)")
    args = parser.parse_args()
    main(500 if args.quick else 20_000)
