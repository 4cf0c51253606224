"""A FastAPI app whose endpoint awaits a batched call: the batcher lives in the lifespan.

``GET /prices/{sku}`` needs one price from a bulk price API.  The app's lifespan opens one
``httpx.AsyncClient`` and starts one ``AsyncMicroBatching`` on the server's event loop
before the first request; the endpoint submits its SKU and awaits the result, so the
lookups of concurrent requests leave as one bulk POST.  When the server stops, the
lifespan shuts the batcher down gracefully (the open batch leaves at once, running
batches and retries finish) and only then closes the client.

The batch processor and the stand-in API come from ``examples/async_http_client.py``.
``python examples/fastapi_app.py`` starts the stand-in and sends concurrent requests
through FastAPI's ``TestClient`` (no server needed); serve it for real with any ASGI
server, e.g. ``uvicorn --factory fastapi_app:create_app`` with ``PRICE_API_URL`` set.

Needs FastAPI and httpx: ``python -m pip install '.[examples]'``.

    python examples/fastapi_app.py [--quick]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
from async_http_client import BATCHING, PriceLookup, UnknownSKU, lookup, stand_in_api
from fastapi import FastAPI, HTTPException, Request

from microbatching import AsyncMicroBatching, QueueFullError, ShutdownError


# --8<-- [start:app]
def create_app(api_url: str | None = None) -> FastAPI:
    """The app, calling the price API at ``api_url`` (default: ``$PRICE_API_URL``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = api_url or os.environ["PRICE_API_URL"]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            batcher = AsyncMicroBatching(None, PriceLookup(client), **BATCHING)
            batcher.start()  # binds to the server's running event loop
            app.state.prices = batcher
            try:
                yield  # the app serves requests here
            finally:
                # Stop admission, flush the open batch, wait (at most 10 s) for running
                # batches and retries; then the client closes, after its last request.
                await batcher.shutdown(timeout=10)

    app = FastAPI(lifespan=lifespan)

    @app.get("/prices/{sku}")
    async def get_price(sku: str, request: Request) -> dict[str, object]:
        batcher: AsyncMicroBatching = request.app.state.prices
        try:
            return {"sku": sku, "price": await lookup(batcher, sku)}  # batched with its neighbours
        except UnknownSKU:
            raise HTTPException(404, f"no price for {sku}") from None
        except (QueueFullError, ShutdownError):
            raise HTTPException(503, "busy, try again") from None

    @app.get("/stats")
    async def get_stats(request: Request) -> dict[str, object]:
        batcher: AsyncMicroBatching = request.app.state.prices
        return batcher.stats().as_dict()

    return app


# --8<-- [end:app]


def main(requests: int) -> None:
    from fastapi.testclient import TestClient

    with stand_in_api() as url, TestClient(create_app(url)) as client:  # runs the lifespan

        def call(n: int) -> int:
            return client.get(f"/prices/{'X' if n % 50 == 7 else 'SKU'}-{n:05d}").status_code

        with ThreadPoolExecutor(32) as pool:  # concurrent requests, as a server would see them
            codes = list(pool.map(call, range(requests)))
        stats = client.get("/stats").json()
    print(f"{requests} requests: {codes.count(200)} priced (200), {codes.count(404)} unknown (404)")
    print(
        f"{stats['batches']} bulk requests to the price API, "
        f"batch size p50 {stats['batch_size']['p50']:.0f}, max {stats['batch_size']['max']:.0f}"
    )
    if codes.count(200) + codes.count(404) != requests:
        raise SystemExit(f"unexpected status codes: {sorted(set(codes))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (for the tests)")
    args = parser.parse_args()
    main(200 if args.quick else 2_000)
