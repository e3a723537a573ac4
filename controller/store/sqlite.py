"""SQLite state for the embedded default: functions and their immutable versions.

WAL mode with `synchronous=NORMAL` (durable across process crashes, one fsync per checkpoint rather than per
commit). One connection, used from a worker thread under a lock: this is the control plane, never the request
path. Times are epoch floats given by the caller; the store reads no clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    latest_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    version TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    manifest_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (function, version)
);
"""


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    name: str
    latest_version: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class VersionRecord:
    function: str
    version: str
    code_digest: str
    manifest_json: str
    created_at: float


class SqliteStore:
    """Functions and versions in one SQLite file. `open()` before use, `close()` after."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        connection = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self._path} was written by a newer Nest (schema {version} > {SCHEMA_VERSION})")
        connection.executescript(SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._connection = connection

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.to_thread(connection.close)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            if self._connection is None:
                raise RuntimeError("the store is not open")
            with self._lock:
                return work(self._connection)

        return await asyncio.to_thread(locked)

    async def put_version(self, record: VersionRecord) -> bool:
        """Record a version and make it the function's latest. False when it already was the latest."""

        def work(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT latest_version FROM functions WHERE name = ?", (record.function,)).fetchone()
                if row is not None and row[0] == record.version:
                    db.execute("ROLLBACK")
                    return False
                if row is None:
                    db.execute(
                        "INSERT INTO functions VALUES (?, ?, ?, ?)",
                        (record.function, record.version, record.created_at, record.created_at),
                    )
                else:
                    db.execute(
                        "UPDATE functions SET latest_version = ?, updated_at = ? WHERE name = ?",
                        (record.version, record.created_at, record.function),
                    )
                db.execute(
                    "INSERT OR IGNORE INTO versions VALUES (?, ?, ?, ?, ?)",
                    (record.function, record.version, record.code_digest, record.manifest_json, record.created_at),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return True

        return await self._run(work)

    async def get_function(self, name: str) -> FunctionRecord | None:
        row = await self._run(lambda db: db.execute("SELECT * FROM functions WHERE name = ?", (name,)).fetchone())
        return FunctionRecord(*row) if row is not None else None

    async def list_functions(self) -> list[FunctionRecord]:
        rows = await self._run(lambda db: db.execute("SELECT * FROM functions ORDER BY name").fetchall())
        return [FunctionRecord(*row) for row in rows]

    async def get_version(self, function: str, version: str) -> VersionRecord | None:
        query = "SELECT * FROM versions WHERE function = ? AND version = ?"
        row = await self._run(lambda db: db.execute(query, (function, version)).fetchone())
        return VersionRecord(*row) if row is not None else None

    async def list_versions(self, function: str) -> list[VersionRecord]:
        query = "SELECT * FROM versions WHERE function = ? ORDER BY created_at DESC, version"
        rows: list[Any] = await self._run(lambda db: db.execute(query, (function,)).fetchall())
        return [VersionRecord(*row) for row in rows]

    async def delete_function(self, name: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM versions WHERE function = ?", (name,))
            deleted = db.execute("DELETE FROM functions WHERE name = ?", (name,)).rowcount
            db.execute("COMMIT")
            return bool(deleted)

        return await self._run(work)

    async def code_digests(self) -> set[str]:
        """Every code digest some version still refers to (for the code store's clean-up)."""
        rows = await self._run(lambda db: db.execute("SELECT DISTINCT code_digest FROM versions").fetchall())
        return {row[0] for row in rows}
