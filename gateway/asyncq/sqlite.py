"""The embedded async queue: tasks in SQLite (WAL), with group commit.

Durability: a `submit` returns (and the caller gets its 202) only after its commit reached the disk
(`synchronous=FULL`). Group commit makes that affordable: every write of the hot path (submissions, and the
dispatcher's leases, settles, retries and lease extensions) queues in memory, and one database thread commits every
write waiting at that moment in a single transaction (one fsync), so concurrent writers share the cost instead of
queueing for one fsync each. No timer is involved: while one group is being written, the next one gathers.

A group without a submission commits with `synchronous=NORMAL`: written to the WAL (a killed process loses
nothing) but not fsynced, since losing the dispatcher's bookkeeping to a power cut only re-runs tasks, which
at-least-once allows; the next durable commit fsyncs the WAL up to it, so a 202 also covers every earlier write.

All database work runs on that one thread (one connection; SQLite has one writer anyway), so the event loop never
blocks on the disk. Times are epoch seconds from the caller.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.asyncq.crashpoints import crashpoint
from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.tasks import RESULT_MAX_BYTES, Submitted, Task, TaskStatus
from nest.contracts.errors import Conflict, NotFound

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.asyncq.tasks import NewTask, Outcome

T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    payload_digest TEXT NOT NULL,
    request_json TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    not_before REAL NOT NULL,
    idempotency_key TEXT,
    callback_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    throttles INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    first_started_at REAL,
    started_at REAL,
    finished_at REAL,
    running_s REAL NOT NULL DEFAULT 0,
    result BLOB,
    result_status INTEGER,
    result_truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks(function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_due ON tasks(status, function, priority, not_before, seq);
CREATE TABLE IF NOT EXISTS paused (function TEXT PRIMARY KEY);
"""
COLUMNS = (
    "id, function, status, priority, payload, payload_digest, request_json, enqueued_at, not_before, idempotency_key,"
    " callback_url, attempts, throttles, lease_owner, lease_until, first_started_at, started_at, finished_at,"
    " running_s, result, result_status, result_truncated, error"
)
DUE = "(status IN ('queued', 'delayed') AND not_before <= :now) OR (status = 'running' AND lease_until < :now)"
DUE_PARTS = (
    "status = 'queued' AND not_before <= :now",
    "status = 'delayed' AND not_before <= :now",
    "status = 'running' AND lease_until < :now",
)
"""`DUE` as three conditions that each walk `tasks_due` in order: with `OR` SQLite collects and sorts the whole
backlog for every lease (18 ms at 76,000 queued); one at a time, with a LIMIT, it reads only what it takes."""


@dataclass
class _Pending:
    work: Callable[[sqlite3.Connection], Any]
    """Runs inside the group's transaction; returns the answer (an `Exception` answer fails only its caller)."""
    future: asyncio.Future[Any]
    durable: bool
    """Must reach the disk before the caller hears back (a submission); else the WAL write is enough."""


class SqliteTaskQueue:
    """`TaskQueue` and `TaskAdmin` over one SQLite file. `open()` before use, `close()` after."""

    def __init__(self, path: Path, *, max_group: int = 512) -> None:
        self._path = path
        self._max_group = max_group
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nest-asyncq")
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self.synchronous = "FULL"
        """The last group's `PRAGMA synchronous`."""
        self.groups_committed = 0
        """How many group commits ran (writes / groups = the batching factor)."""

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self._path} was written by a newer Nest (schema {version} > {SCHEMA_VERSION})")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=True)

    async def _call(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def bound() -> T:
            if self._db is None:
                raise RuntimeError("the task queue is not open")
            return work(self._db)

        return await self._call(bound)

    # group commit

    async def _write(self, work: Callable[[sqlite3.Connection], T | Exception], *, durable: bool = False) -> T:
        """Run `work` in the next group's transaction; returns once that group is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append(_Pending(work, future, durable))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            loop.run_in_executor(self._thread, self._flush, loop)
        return await future

    async def submit(self, new: NewTask) -> Submitted:
        return await self._write(lambda db: self._insert(db, new), durable=True)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._pending_lock:
            group, self._pending = self._pending[: self._max_group], self._pending[self._max_group :]
            if self._pending:
                self._thread.submit(self._flush, loop)  # the next group gathered while this one was taken
            else:
                self._flush_scheduled = False
        if not group:
            return
        answers: list[Any] = []
        try:
            if self._db is None:
                raise RuntimeError("the task queue is not open")
            db = self._db
            synchronous = "FULL" if any(item.durable for item in group) else "NORMAL"
            if synchronous != self.synchronous:
                db.execute(f"PRAGMA synchronous={synchronous}")
                self.synchronous = synchronous
            db.execute("BEGIN IMMEDIATE")
            try:
                answers = [item.work(db) for item in group]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.groups_committed += 1
        except Exception as exc:
            answers = [exc] * len(group)
        loop.call_soon_threadsafe(_resolve_all, [item.future for item in group], answers)

    def _insert(self, db: sqlite3.Connection, new: NewTask) -> Submitted | Exception:
        crashpoint("before_persist")
        if new.idempotency_key is not None:
            query = f"SELECT {COLUMNS} FROM tasks WHERE function = ? AND idempotency_key = ?"
            row = db.execute(query, (new.function, new.idempotency_key)).fetchone()
            if row is not None:
                earlier = _task(row)
                if earlier.payload_digest != new.payload_digest:
                    return Conflict(
                        "idempotency key",
                        new.idempotency_key,
                        f"already used for invocation {earlier.id} with a different payload; use a new key",
                    )
                return Submitted(earlier, created=False)
        status = TaskStatus.DELAYED if new.not_before > new.enqueued_at else TaskStatus.QUEUED
        task = Task(
            id=uuid.uuid4().hex,
            function=new.function,
            status=status,
            priority=new.priority,
            payload=new.payload,
            payload_digest=new.payload_digest,
            request=dict(new.request),
            enqueued_at=new.enqueued_at,
            not_before=new.not_before,
            idempotency_key=new.idempotency_key,
            callback_url=new.callback_url,
        )
        db.execute(
            "INSERT INTO tasks (id, function, status, priority, payload, payload_digest, request_json, enqueued_at,"
            " not_before, idempotency_key, callback_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task.id,
                task.function,
                task.status.value,
                task.priority,
                task.payload,
                task.payload_digest,
                json.dumps(task.request),
                task.enqueued_at,
                task.not_before,
                task.idempotency_key,
                task.callback_url,
            ),
        )
        return Submitted(task, created=True)

    # dispatch

    async def ready(self, now: float) -> dict[QueueKey, int]:
        query = (
            f"SELECT function, priority, count(*) FROM tasks WHERE ({DUE})"
            " AND function NOT IN (SELECT function FROM paused) GROUP BY function, priority"
        )
        rows = await self._run(lambda db: db.execute(query, {"now": now}).fetchall())
        return {QueueKey(function, priority): count for function, priority, count in rows}

    async def backlog(self, function: str) -> int:
        """Tasks of the function that have not finished: waiting or running."""
        query = "SELECT count(*) FROM tasks WHERE function = ? AND status IN ('queued', 'delayed', 'running')"
        row = await self._run(lambda db: db.execute(query, (function,)).fetchone())
        return int(row[0])

    async def lease(self, key: QueueKey, *, owner: str, now: float, lease_s: float, limit: int) -> list[Task]:
        """Oldest due tasks first. A task whose lease ran out (its dispatcher died) counts that lost attempt."""
        query = (
            "UPDATE tasks SET"
            " attempts = attempts + (status = 'running'),"
            " error = CASE WHEN status = 'running' THEN 'lease expired: the dispatcher running it stopped'"
            " ELSE error END,"
            " status = 'running', lease_owner = :owner, lease_until = :until, started_at = :now,"
            " first_started_at = coalesce(first_started_at, :now)"
            " WHERE seq IN (SELECT value FROM json_each(:seqs))"
            f" RETURNING {COLUMNS}"
        )
        picks = [
            f"SELECT not_before, seq FROM tasks WHERE {part} AND function = :function AND priority = :priority"
            " ORDER BY not_before, seq LIMIT :limit"
            for part in DUE_PARTS
        ]
        arguments = {
            "owner": owner,
            "until": now + lease_s,
            "now": now,
            "function": key.function,
            "priority": key.priority,
            "limit": limit,
        }

        def work(db: sqlite3.Connection) -> list[Task]:
            due = sorted(row for pick in picks for row in db.execute(pick, arguments).fetchall())[:limit]
            if not due:
                return []
            rows = db.execute(query, {**arguments, "seqs": json.dumps([seq for _, seq in due])}).fetchall()
            return sorted((_task(row) for row in rows), key=lambda task: (task.not_before, task.enqueued_at))

        return await self._write(work)

    async def extend(self, task_id: str, *, owner: str, until: float) -> bool:
        query = "UPDATE tasks SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = 'running'"
        return await self._write(lambda db: db.execute(query, (until, task_id, owner)).rowcount == 1)

    async def settle(self, task_id: str, *, owner: str, outcome: Outcome, now: float) -> bool:
        result = outcome.result
        truncated = result is not None and len(result) > RESULT_MAX_BYTES
        if result is not None and truncated:
            result = result[:RESULT_MAX_BYTES]
        query = (
            "UPDATE tasks SET status = ?, result = ?, result_status = ?, result_truncated = ?, error = ?,"
            " finished_at = ?, running_s = running_s + max(0, ? - started_at), attempts = attempts + 1,"
            " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ? AND status = 'running'"
        )
        values = (outcome.status.value, result, outcome.result_status, truncated, outcome.error, now, now)
        return await self._write(lambda db: db.execute(query, (*values, task_id, owner)).rowcount == 1)

    async def retry(self, task_id: str, *, owner: str, at: float, spent_attempt: bool, error: str, now: float) -> bool:
        status = TaskStatus.DELAYED if at > now else TaskStatus.QUEUED
        query = (
            "UPDATE tasks SET status = ?, not_before = ?, error = ?, attempts = attempts + ?,"
            " throttles = throttles + ?, running_s = running_s + max(0, ? - started_at),"
            " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ? AND status = 'running'"
        )
        values = (status.value, at, error, int(spent_attempt), int(not spent_attempt), now, task_id, owner)
        return await self._write(lambda db: db.execute(query, values).rowcount == 1)

    # administration

    async def get(self, task_id: str) -> Task | None:
        row = await self._run(lambda db: db.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone())
        return _task(row) if row is not None else None

    async def cancel(self, task_id: str, *, now: float) -> Task:
        update = (
            "UPDATE tasks SET status = 'cancelled', finished_at = ?"
            f" WHERE id = ? AND status IN ('queued', 'delayed') RETURNING {COLUMNS}"
        )
        return await self._transition(task_id, update, (now, task_id), "only queued or delayed tasks can be cancelled")

    async def list_tasks(self, *, function: str | None, status: TaskStatus | None, limit: int) -> list[Task]:
        clauses, values = [], []
        if function is not None:
            clauses.append("function = ?")
            values.append(function)
        if status is not None:
            clauses.append("status = ?")
            values.append(status.value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {COLUMNS} FROM tasks {where} ORDER BY seq DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(query, (*values, limit)).fetchall())
        return [_task(row) for row in rows]

    async def set_paused(self, function: str, paused: bool) -> None:
        if paused:
            await self._run(lambda db: db.execute("INSERT OR IGNORE INTO paused VALUES (?)", (function,)))
        else:
            await self._run(lambda db: db.execute("DELETE FROM paused WHERE function = ?", (function,)))

    async def paused(self) -> set[str]:
        rows = await self._run(lambda db: db.execute("SELECT function FROM paused").fetchall())
        return {row[0] for row in rows}

    async def cancel_waiting(self, function: str, *, now: float) -> int:
        query = (
            "UPDATE tasks SET status = 'cancelled', finished_at = ?"
            " WHERE function = ? AND status IN ('queued', 'delayed')"
        )
        return await self._run(lambda db: db.execute(query, (now, function)).rowcount)

    async def purge_dead(self, function: str | None) -> int:
        """Delete dead-lettered and expired tasks (of one function, or all); how many."""
        query = "DELETE FROM tasks WHERE status IN ('dead_lettered', 'expired')"
        if function is None:
            return await self._run(lambda db: db.execute(query).rowcount)
        return await self._run(lambda db: db.execute(query + " AND function = ?", (function,)).rowcount)

    async def redrive(self, task_id: str, *, now: float) -> Task:
        update = (
            "UPDATE tasks SET status = 'queued', not_before = ?, attempts = 0, throttles = 0, finished_at = NULL,"
            " result = NULL, result_status = NULL, result_truncated = 0"
            f" WHERE id = ? AND status IN ('dead_lettered', 'expired', 'failed') RETURNING {COLUMNS}"
        )
        return await self._transition(
            task_id, update, (now, task_id), "only dead-lettered or expired tasks are redriven"
        )

    async def _transition(self, task_id: str, update: str, values: tuple[Any, ...], allowed: str) -> Task:
        """Run a guarded status change; `NotFound` for an unknown task, `Conflict` naming its status otherwise."""

        def work(db: sqlite3.Connection) -> Task:
            row = db.execute(update, values).fetchone()
            if row is not None:
                return _task(row)
            current = db.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if current is None:
                raise NotFound("invocation", task_id)
            raise Conflict("invocation", task_id, f"is {_task(current).status.value}: {allowed}")

        return await self._run(work)


def _task(row: tuple[Any, ...]) -> Task:
    (task_id, function, status, priority, payload, digest, request_json, enqueued_at, not_before, key) = row[:10]
    rest = row[10:]
    return Task(
        id=task_id,
        function=function,
        status=TaskStatus(status),
        priority=priority,
        payload=bytes(payload),
        payload_digest=digest,
        request=json.loads(request_json),
        enqueued_at=enqueued_at,
        not_before=not_before,
        idempotency_key=key,
        callback_url=rest[0],
        attempts=rest[1],
        throttles=rest[2],
        lease_owner=rest[3],
        lease_until=rest[4],
        first_started_at=rest[5],
        started_at=rest[6],
        finished_at=rest[7],
        running_s=rest[8],
        result=bytes(rest[9]) if rest[9] is not None else None,
        result_status=rest[10],
        result_truncated=bool(rest[11]),
        error=rest[12],
    )


def _resolve_all(futures: list[asyncio.Future[Any]], answers: list[Any]) -> None:
    """On the event loop: one wake-up answers the whole group."""
    for future, answer in zip(futures, answers, strict=True):
        if future.done():
            continue
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)
