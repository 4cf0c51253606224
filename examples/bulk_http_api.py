"""Batching calls to a slow bulk HTTP API.

Many API endpoints accept a list of items per request (geocoding, enrichment, payments,
search indexing) and charge a round trip per request.  Here a local stand-in server
(stdlib ``http.server`` on 127.0.0.1, a random free port) takes 30 ms per request,
rejects some items one by one, and now and then answers 503 for a whole request.
Threads call ``geocode(address)`` one address at a time; the batcher turns their calls
into few bulk requests, retries the 503s and fails only the rejected items.

    python examples/bulk_http_api.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from microbatching import Job, JobFailedError, MicroBatching, RetryPolicy

# -- the stand-in for the remote API ---------------------------------------------------------


class BulkGeocoder(BaseHTTPRequestHandler):
    """POST /geocode with a JSON list of addresses -> a JSON list of results, same order."""

    requests_seen = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        with self.lock:
            type(self).requests_seen += 1
            unlucky = type(self).requests_seen % 7 == 3  # a transient outage now and then
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.03)  # the round trip we want to pay once per batch, not per address
        if unlucky:
            self._reply(503, {"error": "try again"})
            return
        results = [
            {"error": "unknown address"}
            if "nowhere" in address
            else {"lat": len(address), "lon": -len(address)}
            for address in body
        ]
        self._reply(200, results)

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep the example's output clean
        pass


# -- the client side: one bulk request per batch ----------------------------------------------


class TransientError(Exception):
    """The API asked us to try again later."""


class AddressNotFound(Exception):
    """The API rejected one address."""


def make_processor(url: str):  # type: ignore[no-untyped-def]
    def geocode_batch(jobs: list[Job[str]]) -> list[Any]:
        request = urllib.request.Request(
            url, data=json.dumps([job.data for job in jobs]).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                results = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            exc.close()  # the error is the response: close it, and its connection, now
            if exc.code == 503:
                raise TransientError("503 from the API") from None  # retried, whole batch
            raise
        # An error for one item fails that job alone.
        return [AddressNotFound(r["error"]) if "error" in r else (r["lat"], r["lon"]) for r in results]

    return geocode_batch


def main(callers: int, calls_each: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BulkGeocoder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/geocode"
    retry = RetryPolicy(max_attempts=4, base_delay=0.05, retry_on=(TransientError,))
    found, not_found = 0, 0
    with MicroBatching(
        None, make_processor(url), batch_size=50, batch_interval=0.01, max_concurrent_batches=4, retry=retry
    ) as mb:

        def caller(n: int) -> tuple[int, int]:
            ok = bad = 0
            for i in range(calls_each):
                address = f"{i} Main St, Town {n}" if (n + i) % 25 else "1 nowhere lane"
                try:
                    mb.submit_job(Job(data=address)).result(timeout=30)
                    ok += 1
                except JobFailedError as exc:
                    if not isinstance(exc.cause, AddressNotFound):
                        raise
                    bad += 1
            return ok, bad

        with ThreadPoolExecutor(callers) as pool:
            for ok, bad in pool.map(caller, range(callers)):
                found, not_found = found + ok, not_found + bad
        stats = mb.stats()
    server.shutdown()
    server.server_close()
    total = callers * calls_each
    print(
        f"{total} lookups in {BulkGeocoder.requests_seen} HTTP requests: {found} found, {not_found} not found"
    )
    print(
        f"{stats.processor_errors} requests answered 503 ({stats.retried} jobs retried), "
        f"batch size p50 {stats.batch_size.p50:.0f}, request p99 {stats.processing_time.p99 * 1e3:.0f} ms"
    )
    if found + not_found != total or stats.failed != not_found:
        raise SystemExit("unexpected results")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (for the tests)")
    args = parser.parse_args()
    main(*((20, 10) if args.quick else (100, 50)))
