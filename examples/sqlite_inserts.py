"""Batching inserts from an asyncio service into SQLite.

A small line-based TCP service (plain asyncio, stdlib only) receives one event per line
and answers with the row id it was stored under.  Each request submits one job; the
batcher writes whole batches in one transaction (``executemany``), which is what makes
SQLite fast.  At the end it prints how the batches looked (``stats()``).

    python examples/sqlite_inserts.py [--quick] [--db events.db]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
from pathlib import Path

from microbatching import AsyncMicroBatching, Job


class EventStore:
    """The batch processor: one transaction per batch, one row id per job."""

    def __init__(self, path: str) -> None:
        # Sync processors run in a worker thread: the connection is used from there only.
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, kind TEXT, body TEXT)")

    def process_batch(self, jobs: list[Job[dict]]) -> list[object]:
        results: list[object] = []
        with self.db:  # one transaction for the whole batch
            for job in jobs:
                event = job.data
                if "kind" not in event:  # a bad event fails alone, not its batch
                    results.append(ValueError("event without a 'kind'"))
                    continue
                cursor = self.db.execute(
                    "INSERT INTO events (kind, body) VALUES (?, ?)", (event["kind"], json.dumps(event))
                )
                results.append(cursor.lastrowid)
        return results

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])


async def serve(mb: AsyncMicroBatching) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            try:
                row_id = await (await mb.submit_job(Job(data=json.loads(line))))
                writer.write(f"ok {row_id}\n".encode())
            except Exception as exc:
                writer.write(f"error {type(exc).__name__}\n".encode())
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def client(port: int, n: int, client_id: int) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    for i in range(n):
        event = {"kind": "click", "client": client_id, "seq": i} if i % 50 != 49 else {"oops": True}
        writer.write(json.dumps(event).encode() + b"\n")
        await writer.drain()
        replies.append((await reader.readline()).decode().strip())
    writer.close()
    await writer.wait_closed()
    return replies


async def main(clients: int, per_client: int, db_path: str) -> None:
    store = EventStore(db_path)
    async with AsyncMicroBatching(
        None, store, batch_size=200, batch_interval=0.005, max_pending=5_000, retry=None
    ) as mb:
        server = await serve(mb)
        port = server.sockets[0].getsockname()[1]
        replies = await asyncio.gather(*(client(port, per_client, c) for c in range(clients)))
        server.close()
        await server.wait_closed()
    flat = [r for rs in replies for r in rs]
    ok = sum(r.startswith("ok") for r in flat)
    stats = mb.stats()
    print(f"{len(flat)} requests: {ok} stored, {len(flat) - ok} rejected; {store.count()} rows in the table")
    print(
        f"{stats.batches} transactions, batch size p50 {stats.batch_size.p50:.0f} "
        f"(max {stats.batch_size.max:.0f}), queue wait p99 {stats.queue_wait.p99 * 1e3:.1f} ms, "
        f"insert p99 {stats.processing_time.p99 * 1e3:.1f} ms"
    )
    if ok != store.count() or ok + len(flat) // 50 != len(flat):
        raise SystemExit("unexpected results")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (for the tests)")
    parser.add_argument("--db", help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    clients, per_client = (10, 50) if args.quick else (50, 400)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(clients, per_client, args.db or str(Path(tmp) / "events.db")))
