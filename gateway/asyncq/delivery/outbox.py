"""The durable outbox of deliveries, in SQLite next to the task queue.

A delivery is written before its task is settled (`put` is idempotent on the delivery id, so a task that ran
again after a crash does not queue its records twice), sent by the worker, and then marked `delivered`, or
`failed` once its attempts are spent: a failing destination never loses the record. Times are epoch seconds
from the caller.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.asyncq.delivery.records import Delivery, Kind

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    body BLOB NOT NULL,
    headers_json TEXT NOT NULL,
    depth INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_at);
CREATE INDEX IF NOT EXISTS deliveries_call ON deliveries(call_id);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    delivery: Delivery
    attempts: int


class SqliteOutbox:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nest-outbox")

    async def open(self) -> None:
        def work() -> None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=True)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def bound() -> T:
            if self._db is None:
                raise RuntimeError("the outbox is not open")
            return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, bound)

    async def put(self, deliveries: Sequence[Delivery], *, now: float) -> None:
        """Durably record deliveries (refused ones straight as failed). Idempotent on the delivery id."""
        rows = [
            (
                item.id,
                item.call_id,
                item.kind.value,
                item.target,
                item.body,
                json.dumps(item.headers),
                item.depth,
                "failed" if item.refused else "pending",
                now,
                now,
                item.refused,
            )
            for item in deliveries
        ]

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (id, call_id, kind, target, body, headers_json, depth, status,"
                " next_at, created_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("COMMIT")

        if rows:
            await self._run(work)

    async def due(self, *, now: float, limit: int) -> list[Pending]:
        query = (
            "SELECT id, call_id, kind, target, body, headers_json, depth, attempts FROM deliveries"
            " WHERE status = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?"
        )
        rows = await self._run(lambda db: db.execute(query, (now, limit)).fetchall())
        return [
            Pending(Delivery(row[0], row[1], Kind(row[2]), row[3], bytes(row[4]), json.loads(row[5]), row[6]), row[7])
            for row in rows
        ]

    async def next_due(self) -> float | None:
        query = "SELECT min(next_at) FROM deliveries WHERE status = 'pending'"
        row = await self._run(lambda db: db.execute(query).fetchone())
        return float(row[0]) if row[0] is not None else None

    async def delivered(self, delivery_id: str, *, now: float) -> None:
        query = "UPDATE deliveries SET status = 'delivered', delivered_at = ?, attempts = attempts + 1 WHERE id = ?"
        await self._run(lambda db: db.execute(query, (now, delivery_id)))

    async def attempt_failed(self, delivery_id: str, *, error: str, retry_at: float | None) -> None:
        """Another attempt failed: retry at `retry_at`, or give up (kept as `failed`) when it is None."""
        status = "pending" if retry_at is not None else "failed"
        query = (
            "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_error = ?, next_at = coalesce(?, next_at)"
            " WHERE id = ?"
        )
        await self._run(lambda db: db.execute(query, (status, error[:2000], retry_at, delivery_id)))

    async def for_call(self, call_id: str) -> list[dict[str, Any]]:
        """The deliveries of one invocation, for `GET /api/v1/invocations/{id}`."""
        query = (
            "SELECT kind, target, status, attempts, last_error, delivered_at FROM deliveries WHERE call_id = ?"
            " ORDER BY created_at, id"
        )
        rows = await self._run(lambda db: db.execute(query, (call_id,)).fetchall())
        keys = ("kind", "target", "status", "attempts", "error", "delivered_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]
